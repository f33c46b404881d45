"""The local stack's servers are real and usable by the project's client libraries."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from cassandra.cluster import Session
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg_pool import ConnectionPool

from .conftest import BOOTSTRAP, create_topics, unique

ROOT = Path(__file__).resolve().parents[2]


def test_kafka_three_partitions_keys_and_headers(admin: AdminClient) -> None:
    topic = unique("stack_check")
    create_topics(admin, [topic], partitions=3)
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 3

    delivered: list[tuple[int, int]] = []
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True, "acks": "all"})
    for i in range(30):
        producer.produce(
            topic,
            key=f"k{i}".encode(),
            value=f"v{i}".encode(),
            partition=i % 3,
            headers=[("h", f"x{i}".encode())],
            on_delivery=lambda err, msg: delivered.append((msg.partition(), msg.offset())) if err is None else None,
        )
    assert producer.flush(30) == 0
    assert len(delivered) == 30

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": unique("g"), "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    seen: dict[bytes, tuple[bytes, list[tuple[str, bytes]], int]] = {}
    deadline = time.monotonic() + 30
    while len(seen) < 30 and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        seen[msg.key()] = (msg.value(), msg.headers(), msg.partition())
    consumer.close()
    assert len(seen) == 30
    assert seen[b"k7"] == (b"v7", [("h", b"x7")], 1)
    assert {p for _, _, p in seen.values()} == {0, 1, 2}


def test_cassandra_keyspace_table_prepared(cql: Session) -> None:
    ks = unique("stack_ks")
    cql.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    try:
        cql.execute(f"CREATE TABLE {ks}.t (id text, n int, v text, PRIMARY KEY ((id), n))")
        insert = cql.prepare(f"INSERT INTO {ks}.t (id, n, v) VALUES (?, ?, ?)")
        for n in range(5):
            cql.execute(insert, ("a", n, f"value-{n}"))
        select = cql.prepare(f"SELECT n, v FROM {ks}.t WHERE id = ?")
        rows = list(cql.execute(select, ("a",)))
        assert [(r.n, r.v) for r in rows] == [(n, f"value-{n}") for n in range(5)]
    finally:
        cql.execute(f"DROP KEYSPACE {ks}")


def test_postgres_through_pool(pg_conninfo: str) -> None:
    table = unique("stack_t")
    with ConnectionPool(pg_conninfo, min_size=1, max_size=2, open=True) as pool:
        with pool.connection() as conn:
            conn.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, n int)")
            conn.cursor().executemany(f"INSERT INTO {table} VALUES (%s, %s)", [("a", 1), ("b", 2), ("c", 3)])
        try:
            with pool.connection() as conn:
                rows = conn.execute(f"SELECT id, n FROM {table} WHERE id = ANY(%s) ORDER BY id", (["a", "c"],))
                assert rows.fetchall() == [("a", 1), ("c", 3)]
        finally:
            with pool.connection() as conn:
                conn.execute(f"DROP TABLE {table}")


def _up() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "stack" / "stack.py"), "up"], capture_output=True, text=True, timeout=300
    )


def _pids() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "stack" / "stack.py"), "status"], capture_output=True, text=True, timeout=60
    ).stdout
    rows = [line.split() for line in out.splitlines()[1:] if line.split() and line.split()[0] != "all"]
    return {r[0]: r[2] for r in rows if len(r) > 2}


def test_registry_registers_and_serves_a_schema_through_the_confluent_api() -> None:
    """The stack's Schema Registry is a real one: confluent_kafka's client registers a
    schema, gets its id back, and reads it by that id; `status` names it."""
    from confluent_kafka.schema_registry import Schema

    from flows.adapters.registry.client import registry_client
    from flows.settings import Settings

    client = registry_client(Settings.from_env({**os.environ, "INPUT_TOPIC": "in"}))
    subject = f"{unique('stack')}-value"
    text = '{"type":"record","name":"Probe","fields":[{"name":"n","type":"long"}]}'
    schema_id = client.register_schema(subject, Schema(text, "AVRO"))
    assert schema_id > 0
    assert '"Probe"' in client.get_schema(schema_id).schema_str
    assert subject in client.get_subjects()
    status = subprocess.run(
        [sys.executable, "stack/stack.py", "status"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stderr
    assert "Apicurio Registry 2.4.2.Final, Confluent API at /apis/ccompat/v7" in status.stdout


def test_make_up_twice_is_harmless() -> None:
    before = _pids()
    first, second = _up(), _up()
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "stack already up" in second.stdout
    for name in ("kafka", "postgres", "cassandra", "registry"):
        assert f"{name}: already running" in second.stdout
    assert _pids() == before, "a second `up` must not restart anything"
