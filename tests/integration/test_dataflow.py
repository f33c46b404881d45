"""The dataflow as users run it (`python -m bytewax.run dataflow`), on the real stack."""

from __future__ import annotations

import json
from collections import Counter

import psycopg
import pytest
from cassandra.cluster import Session

from flows.adapters.scylla.session import TABLE
from tools import provision, sample
from tools.kafkautil import header, produce_all, read_topic

from .flowrun import Topics, run_dataflow

N_CUSTOMERS = 300


@pytest.fixture(scope="module")
def seeded(pg_conninfo: str) -> dict[str, tuple[str, str, str, str]]:
    topics = Topics()
    provision.seed_customers(topics.settings, sample.customers(N_CUSTOMERS))
    with psycopg.connect(pg_conninfo) as conn:
        rows = conn.execute(
            "SELECT customer_id, name, segment, country, status FROM customers WHERE customer_id = ANY(%s)",
            ([sample.customer_id(i) for i in range(N_CUSTOMERS)],),
        )
        return {r[0]: r[1:] for r in rows}


def test_mixed_batch_end_to_end(seeded, cql: Session, pg_conninfo: str) -> None:
    topics = Topics(partitions=3).create()
    settings = topics.settings
    records = list(
        sample.events(1200, N_CUSTOMERS, bad_ratio=0.05, seed=3, large=True, max_value_bytes=settings.max_value_bytes)
    )
    produce_all(settings, topics.input, records)
    inputs = {(m.partition(), m.offset()): m for m in read_topic(settings, topics.input)}
    assert len(inputs) == len(records)

    run = run_dataflow({**topics.env, "STOP_AT_END": "true"})
    assert run.returncode == 0, run.stderr[-3000:]

    enriched = list(read_topic(settings, topics.output))
    failed = list(read_topic(settings, topics.failure))
    seen = Counter((int(header(m, "source.partition")), int(header(m, "source.offset"))) for m in enriched + failed)
    assert set(seen) == set(inputs), "every input offset appears in success or failure"
    assert max(seen.values()) == 1, "and exactly once"
    assert {header(m, "source.topic") for m in enriched + failed} == {topics.input}

    expected = Counter(r.expect for r in records)
    assert len(enriched) == expected["enriched"]
    for m in enriched:
        src = inputs[(int(header(m, "source.partition")), int(header(m, "source.offset")))]
        doc, original = json.loads(m.value()), json.loads(src.value())
        name, segment, country, status = seeded[doc["customer_id"]]
        assert doc["customer"] == {"name": name, "segment": segment, "country": country, "status": status}
        assert {k: v for k, v in doc.items() if k not in ("customer", "enriched_at")} == original
        assert m.key() == (src.key() if src.key() is not None else doc["customer_id"].encode())
        assert header(m, "trace-id") == header(src, "trace-id")

    codes = Counter(header(m, "error.code") for m in failed)
    assert codes == Counter({k: v for k, v in expected.items() if k != "enriched"})
    for m in failed:
        src = inputs[(int(header(m, "source.partition")), int(header(m, "source.offset")))]
        assert m.value() == src.value() and m.key() == src.key(), "failure values are the input, byte for byte"
        assert header(m, "error.stage") in {"decode", "validate", "enrich"}
        assert header(m, "error.message") and header(m, "failed_at")
        assert header(m, "source.timestamp") == str(src.timestamp()[1])
        if header(m, "error.code") == "customer_not_found":
            assert header(m, "error.field") == "$.customer_id"
    injected = [m for m in failed if m.value() and b"OR 1=1" in m.value()]
    assert injected and {header(m, "error.code") for m in injected} == {"customer_not_found"}

    rows = list(
        cql.execute(
            f"SELECT event_id, source_partition, source_offset, status, error_code, output_topic "
            f"FROM {topics.keyspace}.{TABLE} WHERE source_topic = %s ALLOW FILTERING",
            (topics.input,),
        )
    )
    assert len(rows) == len(records)
    by_offset = {(r.source_partition, r.source_offset): r for r in rows}
    assert set(by_offset) == set(inputs)
    for m in failed:
        row = by_offset[(int(header(m, "source.partition")), int(header(m, "source.offset")))]
        assert (row.status, row.error_code, row.output_topic) == ("failed", header(m, "error.code"), topics.failure)
    for m in enriched:
        row = by_offset[(int(header(m, "source.partition")), int(header(m, "source.offset")))]
        assert (row.status, row.error_code, row.output_topic) == ("enriched", None, topics.output)
        assert row.event_id == json.loads(m.value())["event_id"]
    with psycopg.connect(pg_conninfo) as conn:  # the injection attempt changed nothing
        assert conn.execute(
            "SELECT count(*) FROM customers WHERE customer_id = ANY(%s)",
            ([sample.customer_id(i) for i in range(N_CUSTOMERS)],),
        ).fetchone() == (N_CUSTOMERS,)
    assert '"final progress"' in run.stderr and "hunter" not in run.stderr


def _one_error_line(run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if '"level":"ERROR"' in line or line.startswith("error:")]
    assert len(errors) == 1, run.stderr[-2000:]
    return errors[0]


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "Kafka at 127.0.0.1:1 (PLAINTEXT): can't connect"),
        (
            {"PG_DSN": "postgresql://postgres:s3cret@127.0.0.1:1/enrichment"},
            "PostgreSQL at postgresql://postgres:****@",
        ),
        ({"SCYLLA_PORT": "1"}, "ScyllaDB/Cassandra at 127.0.0.1:1: can't connect"),
        ({"INPUT_TOPIC": "no.such.topic.anywhere"}, "Kafka topic 'no.such.topic.anywhere' does not exist"),
    ],
)
def test_unreachable_dependency_exits_2_with_one_line(env: dict[str, str], needle: str, admin) -> None:
    topics = Topics(partitions=1).create()
    run = run_dataflow({**topics.env, "STOP_AT_END": "true", "STARTUP_TIMEOUT_SECONDS": "3", **env}, timeout=60)
    assert run.returncode == 2, run.stderr[-2000:]
    line = _one_error_line(run)
    assert needle in line and "s3cret" not in run.stderr


def test_bad_setting_exits_2_naming_the_variable() -> None:
    run = run_dataflow({"SCYLLA_PORT": "ninety", "PG_DSN": "postgresql://u:s3cret@h/db"}, timeout=60)
    assert run.returncode == 2
    assert _one_error_line(run) == "error: bad setting SCYLLA_PORT='ninety': expected an integer, got 'ninety'"
