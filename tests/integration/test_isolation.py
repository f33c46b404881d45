"""A value a dependency refuses fails its own record, never its batch (real servers)."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid

import psycopg
import pytest
from cassandra.cluster import Session

from flows.adapters.postgres.customers import PgCustomerLookup
from flows.adapters.scylla.session import TABLE
from flows.adapters.scylla.writer import HistoryWriter
from flows.core.model import HistoryRow
from flows.settings import Settings
from flows.telemetry.metrics import Metrics
from tools import provision, sample
from tools.kafkautil import produce_all

from .conftest import PG_DSN
from .flowrun import Topics, run_dataflow
from .outcome import collect

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def seeded() -> Settings:
    settings = Topics().settings
    provision.seed_customers(settings, sample.customers(20))
    return settings


def test_a_nul_in_customer_id_fails_only_its_record_end_to_end(seeded: Settings, cql: Session) -> None:
    topics = Topics(partitions=1, prefix="nul").create()

    def event(i: int, cid: str) -> bytes:
        return json.dumps(
            {"event_id": f"n-{i}", "event_type": "t", "occurred_at": "2026-01-01T00:00:00Z", "customer_id": cid}
        ).encode()

    ids = [sample.customer_id(1), "X\u0000", sample.customer_id(2), "\u0000", sample.customer_id(3)]
    produce_all(topics.settings, topics.input, [(b"k", event(i, cid), []) for i, cid in enumerate(ids)])
    run = run_dataflow({**topics.env, "STOP_AT_END": "true"})
    assert run.returncode == 0, run.stderr[-3000:]
    out = collect(topics.settings, cql, topics.keyspace, topics.input, topics.output, topics.failure)
    assert set(out.enriched) == {(0, 0), (0, 2), (0, 4)}
    assert out.code((0, 1)) == out.code((0, 3)) == "customer_not_found"
    assert out.failed[(0, 1)].value == event(1, "X\u0000")
    assert len(out.history) == 5


@pytest.fixture(scope="module")
def latin1_dsn() -> str:
    """A database whose encoding lacks most of Unicode: PostgreSQL refuses ids it can't store."""
    name = "enrichment_latin1"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f"CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    dsn = PG_DSN.rsplit("/", 1)[0] + f"/{name}"
    settings = Settings.from_env({**os.environ, "PG_DSN": dsn})
    provision.seed_customers(settings, sample.customers(5))
    return dsn


def test_ids_the_database_refuses_are_found_by_halving_the_batch(latin1_dsn: str) -> None:
    settings = Settings.from_env({**os.environ, "PG_DSN": latin1_dsn, "RETRY_DEADLINE_SECONDS": "5"})
    metrics = Metrics(registry=None)
    lookup = PgCustomerLookup(settings, metrics=metrics)
    try:
        known = [sample.customer_id(i) for i in range(5)]
        ids = [known[0], "emoji-😀", known[1], "é-fits-latin1", "nul-\u0000", known[2], "ж-cyrillic", known[3]]
        found = lookup.fetch(ids)
        assert sorted(found) == known[:4]
        assert metrics.lookup_refused["customers"] == 2  # the emoji and the Cyrillic id; the NUL is never sent
        assert lookup.fetch(known).keys() == set(known), "the pool is healthy after the refusals"
    finally:
        lookup.close()


def row(i: int, payload: str | None) -> HistoryRow:
    return HistoryRow(
        f"iso-{uuid.uuid4().hex}-{i}",
        "iso.topic",
        0,
        i,
        "failed",
        "invalid_json",
        None,
        None,
        None,
        NOW,
        "iso.dlq",
        payload,
    )


def test_a_history_row_the_store_refuses_is_written_without_its_payload(cql: Session) -> None:
    """Cassandra refuses a mutation over half its commit log segment (16 MiB here): the
    other rows of the batch are written, the refused one without its payload."""
    settings = Settings.from_env({**os.environ, "SCYLLA_KEYSPACE": "enrichment_it"})
    metrics = Metrics(registry=None)
    writer = HistoryWriter(settings, metrics=metrics)
    try:
        rows = [row(0, "{}"), row(1, "x" * (17 * 1024 * 1024)), row(2, '{"a":1}')]
        writer.write(rows)
        assert metrics.degraded["history"] == 1
    finally:
        writer.close()
    select = cql.prepare(f"SELECT payload FROM enrichment_it.{TABLE} WHERE event_id = ?")  # noqa: S608
    got = {r.event_id: cql.execute(select, (r.event_id,)).one().payload for r in rows}
    assert got == {rows[0].event_id: "{}", rows[1].event_id: None, rows[2].event_id: '{"a":1}'}


def test_a_configuration_fault_stops_the_flow_at_start_not_at_a_record(seeded: Settings) -> None:
    """A role that may not read the customers table: exit 2 before any record, one line."""
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'enrichment_noselect'").fetchone():
            conn.execute("CREATE ROLE enrichment_noselect LOGIN")
    topics = Topics(partitions=1, prefix="noselect").create()
    dsn = PG_DSN.replace("postgres@", "enrichment_noselect@")
    run = run_dataflow({**topics.env, "STOP_AT_END": "true", "PG_DSN": dsn}, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "the customer lookup fails: permission denied for table customers" in run.stderr
