"""Create what the pipeline reads and writes: topics, the customers table, the history
schema. Used by `make demo`, the tests and the benchmark; production creates these with
its own tooling (the dataflow itself only creates the history schema)."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from flows.model import Customer
from flows.settings import Settings
from flows.sizes import topic_sizes_to_create

CUSTOMERS_DDL = """CREATE TABLE IF NOT EXISTS customers (
    customer_id text PRIMARY KEY,
    name text NOT NULL,
    segment text NOT NULL,
    country text NOT NULL,
    status text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now())"""


def ensure_topics(settings: Settings, names: Iterable[str], partitions: int) -> None:
    """Create missing topics, sized by the size rule (flows.sizes): the input topic takes a
    value of MAX_VALUE_BYTES plus 64 KiB of key and headers, the output and failure topics
    8 KiB more. An existing topic smaller than that is enlarged."""
    input_size, output_size = topic_sizes_to_create(settings.max_value_bytes)
    wanted = {n: input_size if n == settings.input_topic else output_size for n in names}
    admin = AdminClient(settings.kafka_common())
    existing = admin.list_topics(timeout=settings.startup_timeout_seconds).topics
    new = [NewTopic(n, num_partitions=partitions, replication_factor=1,
                    config={"max.message.bytes": str(size)})
           for n, size in wanted.items() if n not in existing]
    if new:
        for topic, fut in admin.create_topics(new, operation_timeout=30).items():
            try:
                fut.result(timeout=60)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise RuntimeError(f"creating topic {topic}: {exc}") from exc
    _enlarge(admin, {n: size for n, size in wanted.items() if n in existing})


def _enlarge(admin: AdminClient, wanted: dict[str, int]) -> None:
    if not wanted:
        return
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in wanted]
    small = []
    for resource, fut in admin.describe_configs(resources).items():
        current = int(fut.result(timeout=60)["max.message.bytes"].value)
        if current < wanted[resource.name]:
            small.append(ConfigResource(ResourceType.TOPIC, resource.name, incremental_configs=[ConfigEntry(
                "max.message.bytes", str(wanted[resource.name]),
                incremental_operation=AlterConfigOpType.SET)]))
    if small:
        for fut in admin.incremental_alter_configs(small).values():
            fut.result(timeout=60)


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
