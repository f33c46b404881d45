# The README's commands. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv up down status wipe demo feed test test-hostile test-resilience test-unit test-integration lint typecheck bench bench-freshness run manifests lag clean

help: ## list the commands
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt
	@py=$$(stack/python.sh) || exit 1; \
	  [ -x $(PY) ] || { echo "creating $(VENV) with $$py"; $$py -m venv $(VENV); }
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

venv: $(STAMP) ## create .venv with the pinned requirements

up: $(STAMP) ## start Kafka, PostgreSQL and Cassandra (no-op when up)
	$(PY) stack/stack.py up

down: $(STAMP) ## stop the local stack
	$(PY) stack/stack.py down

status: $(STAMP) ## show each server, its address, pid and whether it answers
	$(PY) stack/stack.py status

wipe: $(STAMP) ## delete all local stack data (stack must be down)
	$(PY) stack/stack.py wipe

test: up lint ## lint, then unit and integration tests against the real local stack (the fault matrix's fast slice)
	$(PY) -m pytest -m "not resilience"

MATRIX_REPORT ?= matrix-report.jsonl
test-resilience: up ## the whole fault matrix and the long fault-injection tests (about 90 minutes); figures in matrix-report.jsonl
	rm -f $(MATRIX_REPORT)
	MATRIX_REPORT=$(abspath $(MATRIX_REPORT)) RESILIENCE_RECORDS=$(or $(RECORDS),40000) $(PY) -m pytest -s -m "resilience or integration" tests/integration/test_matrix.py tests/integration/test_resilience.py tests/integration/test_exactly_once.py tests/integration/test_shapes.py
	$(PY) -m tests.integration.matrix $(MATRIX_REPORT)

test-hostile: up ## the hostile-input campaign, large: make test-hostile EXAMPLES=5000 (about 50,000 records)
	HOSTILE_EXAMPLES=$(or $(EXAMPLES),5000) $(PY) -m pytest -s -W ignore tests/integration/test_hostile.py

test-unit: $(STAMP) ## unit tests only (no servers)
	$(PY) -m pytest tests/unit

lint: $(STAMP) ## ruff (lint and format), mypy --strict, and the layering of flows/ (import-linter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

lag: ## the consumer group's offsets and lag, with Kafka's kafka-consumer-groups: make lag GROUP=enrichment
	$(PY) stack/stack.py groups --describe --group $(or $(GROUP),enrichment)

clean: ## remove .venv and caches (not the stack data)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

demo: up ## seed data, run the dataflow over a sample with every failure code, print a summary (local stack only; ALLOW_REMOTE=1 to override)
	$(PY) -m tools.demo $(if $(ALLOW_REMOTE),--allow-remote)

PROCESSES ?= 1
WORKERS ?= 1
run: up ## run the dataflow as a local cluster until Ctrl-C, with a progress line: make run PROCESSES=2 WORKERS=1 (logs and recovery in recovery/local)
	$(PY) -m tools.run_local --processes $(PROCESSES) --workers $(WORKERS) --watch

RATE ?= 200
feed: up ## feed realistic events (2% bad, every failure code) to INPUT_TOPIC for make run: make feed RATE=200 N=10000 (N=0: until Ctrl-C)
	$(PY) -m tools.feed --rate $(RATE) --records $(or $(N),10000)

manifests: $(STAMP) ## render the example Kubernetes overlay (builds the pinned kustomize once)
	$(PY) -m tools.kustomize build k8s/overlays/example

SOAK_MINUTES ?= 0
BENCH_ARGS ?=
bench: up ## benchmark: passthrough, I/O floor, dataflow, exactly-once, naive handler (N=200000 SOAK_MINUTES=0 BENCH_ARGS=--uniform)
	$(PY) -m bench --records $(or $(N),200000) --soak-minutes $(SOAK_MINUTES) $(BENCH_ARGS)

bench-freshness: up ## CACHE_INVALIDATION=notify: staleness p50/p99 under load and a burst of changes, the cost of listening
	$(PY) -m bench.staleness $(BENCH_ARGS)
