"""The hostile-input campaign (docs/operations.md, "What happens to bad records"): generated records of
every hostile kind (tests/hostile.py), valid ones between them, produced to the real broker
byte for byte, then run through the dataflow and through the Lambda handler. For each
record: routed exactly once, a dead letter byte for byte, a readable history row, valid
neighbours enriched; the process exits 0 and the handler never raises.

Sized for CI by default; `make test-hostile` runs at least 50,000 generated records
(HOSTILE_EXAMPLES scales it: each example is 1..20 hostile records plus as many valid).
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any

import pytest
from cassandra.cluster import Session
from hypothesis import HealthCheck, Phase, given, settings

from flows.runtime.awslambda import handler as lambda_handler
from tests.hostile import CUSTOMERS, LIMIT, Hostile, batches, check
from tests.rawkafka import RawProducer
from tools import provision, sample

from .conftest import BOOTSTRAP
from .flowrun import Topics, run_dataflow
from .outcome import collect

EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "40"))
ENV = {"MAX_VALUE_BYTES": str(LIMIT)}
LAMBDA_BATCH = 200  # records per invocation (the event source mapping's batch size)


@pytest.fixture(scope="module")
def customers() -> dict[str, Any]:
    settings = Topics().settings
    seeded = {c.customer_id: c for c in sample.customers(len(CUSTOMERS))}
    provision.seed_customers(settings, seeded.values())
    return seeded


@pytest.fixture(scope="module")
def campaign() -> tuple[Topics, list[tuple[Hostile, tuple[int, int]]]]:
    """Generate and produce the campaign's records once; both runtimes read them."""
    topics = Topics(partitions=2, prefix="hostile", extra_env=ENV).create()
    produced: list[tuple[Hostile, tuple[int, int]]] = []
    # batches of several records stay well under what the topic accepts; a large one goes alone
    producer = RawProducer(BOOTSTRAP, {"linger.ms": "5", "batch.size": "16384", "message.max.bytes": "2000000"})

    # generation only: a failure here is a generator bug, and shrinking would produce again
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(batch=batches())
    def feed(batch: list[Hostile]) -> None:
        for record in batch:
            producer.produce(topics.input, None, record.key, record.value, record.headers)
        delivered = producer.flush(60)
        assert len(delivered) == len(batch)
        produced.extend(
            (record, (partition, offset)) for record, (_, partition, offset) in zip(batch, delivered, strict=True)
        )

    started = time.monotonic()
    try:
        feed()
    finally:
        producer.close()
    print(f"\nhostile campaign: {len(produced)} records generated and produced in {time.monotonic() - started:.0f}s")
    return topics, produced


def test_no_record_can_stop_the_dataflow(campaign, customers, cql: Session) -> None:
    topics, produced = campaign
    started = time.monotonic()
    run = run_dataflow({**topics.env, "STOP_AT_END": "true"}, timeout=1800)
    took = time.monotonic() - started
    assert run.returncode == 0, run.stderr[-5000:]
    outcome = collect(topics.settings, cql, topics.keyspace, topics.input, topics.output, topics.failure)
    report = check(produced, outcome, customers)
    print(f"dataflow, {took:.0f}s: {report.line()}")
    assert report.enriched >= sum(1 for r, _ in produced if r.valid)
    assert "internal_error" not in (report.codes or {})


def test_no_record_can_stop_the_exactly_once_dataflow(campaign, customers, cql: Session) -> None:
    """The same records through PROCESSING_GUARANTEE=exactly-once, read as its consumers
    must (read_committed): a record that broke a transaction would abort it again and again
    (the flow re-reads what an aborted transaction covered) and never come out."""
    topics, produced = campaign
    eos = Topics(partitions=2, prefix="hostileeos", keyspace="enrichment_hostile_eos", extra_env=ENV).create()
    env = {
        **eos.env,
        "INPUT_TOPIC": topics.input,
        "PROCESSING_GUARANTEE": "exactly-once",
        "CONSUMER_GROUP": f"{eos.input}.group",
        "STOP_AT_END": "true",
    }
    started = time.monotonic()
    run = run_dataflow(env, timeout=1800)
    took = time.monotonic() - started
    assert run.returncode == 0, run.stderr[-5000:]
    assert "transaction not committed" not in run.stderr and "stuck" not in run.stderr, run.stderr[-5000:]
    outcome = collect(topics.settings, cql, eos.keyspace, topics.input, eos.output, eos.failure, committed_only=True)
    report = check(produced, outcome, customers)
    print(f"exactly-once dataflow, {took:.0f}s: {report.line()}")
    assert report.enriched >= sum(1 for r, _ in produced if r.valid)
    assert "internal_error" not in (report.codes or {})


def test_no_record_can_fail_a_lambda_batch(campaign, customers, cql: Session, monkeypatch) -> None:
    topics, produced = campaign
    lambda_topics = Topics(partitions=2, prefix="hostilelam", extra_env=ENV).create()
    env = {**lambda_topics.env, "INPUT_TOPIC": topics.input}  # the records' own topic; outputs apart
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    lambda_handler.CLIENTS.close()
    keyspace = "enrichment_hostile_lambda"
    monkeypatch.setenv("SCYLLA_KEYSPACE", keyspace)
    try:
        records = sorted(produced, key=lambda item: item[1])
        for start in range(0, len(records), LAMBDA_BATCH):
            chunk = records[start : start + LAMBDA_BATCH]
            summary = lambda_handler.handler(aws_event(topics.input, chunk), None)
            assert summary["records"] == len(chunk)
    finally:
        lambda_handler.CLIENTS.close()
    outcome = collect(topics.settings, cql, keyspace, topics.input, lambda_topics.output, lambda_topics.failure)
    report = check(produced, outcome, customers)
    print(f"Lambda handler: {report.line()}")


def aws_event(topic: str, records: list[tuple[Hostile, tuple[int, int]]]) -> dict[str, Any]:
    """A self-managed Kafka event as AWS sends it: header names are JSON strings (a name
    that is not UTF-8 arrives with lone surrogates here), header bytes signed (Java)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record, (partition, offset) in records:
        item: dict[str, Any] = {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "timestamp": 1_700_000_000_000,
            "timestampType": "CREATE_TIME",
            "key": None if record.key is None else base64.b64encode(record.key).decode(),
            "value": None if record.value is None else base64.b64encode(record.value).decode(),
            "headers": [
                {
                    name.decode("utf-8", "surrogateescape"): None
                    if value is None
                    else [b - 256 if b > 127 else b for b in value]
                }
                for name, value in record.headers
            ],
        }
        groups.setdefault(f"{topic}-{partition}", []).append(item)
    return {"eventSource": "SelfManagedKafka", "bootstrapServers": BOOTSTRAP, "records": groups}
