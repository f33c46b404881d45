"""Create what the pipeline reads and writes: topics, the customers table, the history
schema. Used by `make demo`, the tests and the benchmark; production creates these with
its own tooling (the dataflow itself only creates the history schema)."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from flows.kafka_io import HEADER_ROOM
from flows.model import Customer
from flows.settings import Settings

CUSTOMERS_DDL = """CREATE TABLE IF NOT EXISTS customers (
    customer_id text PRIMARY KEY,
    name text NOT NULL,
    segment text NOT NULL,
    country text NOT NULL,
    status text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now())"""


def ensure_topics(settings: Settings, names: Iterable[str], partitions: int) -> None:
    """Create missing topics; each accepts values up to MAX_VALUE_BYTES plus headers."""
    admin = AdminClient(settings.kafka_common())
    existing = admin.list_topics(timeout=settings.startup_timeout_seconds).topics
    new = [
        NewTopic(n, num_partitions=partitions, replication_factor=1,
                 config={"max.message.bytes": str(settings.max_value_bytes + HEADER_ROOM)})
        for n in names if n not in existing
    ]
    if not new:
        return
    for topic, fut in admin.create_topics(new, operation_timeout=30).items():
        try:
            fut.result(timeout=60)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"creating topic {topic}: {exc}") from exc


def delete_topics(settings: Settings, names: Iterable[str]) -> None:
    admin = AdminClient(settings.kafka_common())
    existing = admin.list_topics(timeout=settings.startup_timeout_seconds).topics
    todo = [n for n in names if n in existing]
    if todo:
        for fut in admin.delete_topics(todo, operation_timeout=30).values():
            fut.result(timeout=60)


def seed_customers(settings: Settings, customers: Iterable[Customer]) -> int:
    """Create the customers table when missing and upsert `customers` into it."""
    rows = [(c.customer_id, c.name, c.segment, c.country, c.status) for c in customers]
    with psycopg.connect(settings.pg_dsn.get(), **settings.pg_connect_kwargs()) as conn:
        conn.execute(CUSTOMERS_DDL)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO customers (customer_id, name, segment, country, status) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (customer_id) DO UPDATE SET name = EXCLUDED.name, segment = EXCLUDED.segment, "
                "country = EXCLUDED.country, status = EXCLUDED.status, updated_at = now()",
                rows,
            )
    return len(rows)
