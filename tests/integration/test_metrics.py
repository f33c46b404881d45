"""The pipeline's Prometheus metrics, scraped from Bytewax's dataflow API of a running
dataflow (`BYTEWAX_DATAFLOW_API_ENABLED`), against what the dataflow produced."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tools import provision, sample
from tools.kafkautil import header, produce_all, read_topic

from ..unit.monitoring_names import used_names
from .flowrun import Topics, start_dataflow
from .resilience import sigterm
from .test_scale import free_base_port

N = 3000
N_CUSTOMERS = 500


def free_port() -> int:
    return free_base_port(1)


def scrape(port: int) -> dict[str, float]:
    """Every sample, keyed `name` or `name{label="value",...}`."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def wait_for(port: int, name: str, value: float, timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    last: dict[str, float] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # the API is not up yet
            last = scrape(port)
        if last.get(name) == value:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{name} is {last.get(name)} after {timeout}s, expected {value}")


def test_metrics_count_what_the_dataflow_produced(tmp_path: Path) -> None:
    port = free_port()
    topics = Topics(
        partitions=3,
        prefix="metrics",
        extra_env={
            "STOP_AT_END": "false",
            "BYTEWAX_DATAFLOW_API_ENABLED": "true",
            "BYTEWAX_DATAFLOW_API_PORT": str(port),
            "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(tmp_path),
        },
    ).create()
    settings = topics.settings
    provision.seed_customers(settings, sample.customers(N_CUSTOMERS))
    records = list(sample.events(N, N_CUSTOMERS, bad_ratio=0.05, seed=19, large=False))
    expected = Counter(r.expect for r in records)
    produce_all(settings, topics.input, records)

    log = tmp_path / "dataflow.log"
    proc = start_dataflow(topics.env, log)
    try:
        m = wait_for(port, 'enrichment_output_written_total{output="history"}', N, timeout=120)
        # the Kafka outputs are flushed after history: wait until the topics hold everything too
        deadline = time.monotonic() + 60
        while True:
            enriched = list(read_topic(settings, topics.output))
            failed = list(read_topic(settings, topics.failure))
            if len(enriched) + len(failed) >= N or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        m = scrape(port)
        rc, _ = sigterm(proc, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, log.read_text()[-3000:]

    produced_codes = Counter(header(msg, "error.code") for msg in failed)
    assert len(enriched) == expected["enriched"] and len(enriched) + len(failed) == N
    # counters against what was fed and what is on the topics
    assert m["enrichment_records_in_total"] == N
    assert m["enrichment_records_enriched_total"] == len(enriched)
    for code in (
        "empty_value",
        "payload_too_large",
        "invalid_json",
        "schema_violation",
        "customer_not_found",
        "internal_error",
    ):
        assert m[f'enrichment_records_failed_total{{code="{code}"}}'] == produced_codes.get(code, 0), code
    # each output by its label: every record's row, every message on its topic
    assert m['enrichment_output_written_total{output="history"}'] == N
    assert m['enrichment_output_written_total{output="enriched"}'] == len(enriched)
    assert m['enrichment_output_written_total{output="failed"}'] == len(failed)
    assert m["enrichment_records_in_flight"] == 0
    # every decoded record was looked up, in the cache or in PostgreSQL
    decoded = len(enriched) + produced_codes["customer_not_found"]
    customers = '{lookup="customers"}'
    assert m[f"enrichment_cache_hits_total{customers}"] + m[f"enrichment_cache_misses_total{customers}"] == decoded
    assert m[f"enrichment_cache_hits_total{customers}"] > 0
    # latency histograms: one observation per query / per written batch
    queries = m[f"enrichment_lookup_queries_total{customers}"]
    assert queries > 0 and m[f"enrichment_lookup_duration_seconds_count{customers}"] == queries
    assert m['enrichment_lookup_duration_seconds_bucket{le="+Inf",lookup="customers"}'] == queries
    assert m[f"enrichment_lookup_duration_seconds_sum{customers}"] > 0
    assert m['enrichment_output_write_duration_seconds_count{output="history"}'] > 0
    assert m['enrichment_output_write_duration_seconds_sum{output="history"}'] > 0
    # Bytewax's own metrics are on the same page
    assert any(name.startswith("bytewax_item_inp_count") for name in m), sorted({n.split("{")[0] for n in m})
    # every dependency answered all along; the build is named; no `_created` series
    for dependency in ("kafka", "postgresql", "cassandra"):
        assert m[f'enrichment_dependency_up{{dependency="{dependency}"}}'] == 1
        assert m[f'enrichment_dependency_retries_total{{dependency="{dependency}"}}'] == 0
    assert [n for n in m if n.startswith("enrichment_build_info{")], "build_info"
    assert not [n for n in m if n.split("{")[0].endswith("_created")]
    # the Grafana dashboard and the alert rules (k8s/monitoring) query names this page has
    scraped = {name.split("{")[0] for name in m}
    assert used_names() <= scraped, used_names() - scraped
    # log lines say which process and which worker wrote them
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines and all(line["service"] == "enrichment-dataflow" and line["process"] == 0 for line in lines)
    assert {line["worker"] for line in lines if "worker" in line} == {0}, "one worker, index 0"
