"""The benchmark's data: its own PostgreSQL database with seeded customers, its topics, and
the workload loaded once into a multi-partition input topic.

The loader keeps what each input record should become (`Expected`), keyed by the partition
and offset Kafka assigned it, so every variant's outputs can be checked record by record.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from flows import connections
from flows.core.sizes import topic_sizes_to_create
from flows.settings import Settings
from tools import sample
from tools.provision import CUSTOMERS_DDL

ZIPF_S = 1.1
PAD = 190  # payload padding: events of ~400 bytes (300..500 asked)


@dataclass(frozen=True, slots=True)
class Expected:
    """One input record: when Kafka stored it and what it must become."""

    create_ms: int
    outcome: str  # "enriched" or the failure's error.code
    crc: int  # of the value, to check the passthrough copies bytes unchanged


@dataclass
class Loaded:
    topic: str
    records: int
    seconds: float
    bytes_mean: float
    # partition -> first offset, and the records in offset order from there
    base: dict[int, int] = field(default_factory=dict)
    by_partition: dict[int, list[Expected]] = field(default_factory=dict)

    def get(self, partition: int, offset: int) -> Expected | None:
        rows = self.by_partition.get(partition)
        if rows is None:
            return None
        i = offset - self.base[partition]
        return rows[i] if 0 <= i < len(rows) else None

    def outcomes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for rows in self.by_partition.values():
            for e in rows:
                out[e.outcome] = out.get(e.outcome, 0) + 1
        return out


# --- PostgreSQL: a database of its own, so tests running beside it can't change its customers


def bench_dsn(settings: Settings, database: str) -> str:
    return make_conninfo(settings.pg_dsn.get(), dbname=database)


def ensure_database(settings: Settings, database: str) -> None:
    with psycopg.connect(settings.pg_dsn.get(), autocommit=True, **connections.pg_connect_kwargs(settings)) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def seed_customers(dsn: str, settings: Settings, n: int) -> float:
    """Exactly customers 0..n-1 of `tools.sample` (TRUNCATE, then COPY: 100,000 rows in about
    a second, where tools.provision.seed_customers' executemany takes much longer)."""
    started = time.monotonic()
    with psycopg.connect(dsn, **connections.pg_connect_kwargs(settings)) as conn:
        conn.execute(CUSTOMERS_DDL)
        conn.execute("TRUNCATE customers")
        with (
            conn.cursor() as cur,
            cur.copy("COPY customers (customer_id, name, segment, country, status) FROM STDIN") as copy,
        ):
            for c in sample.customers(n):
                copy.write_row((c.customer_id, c.name, c.segment, c.country, c.status))
        conn.execute("ANALYZE customers")
    return time.monotonic() - started


def pg_database_of(dsn: str) -> str:
    return str(conninfo_to_dict(dsn).get("dbname", ""))


# --- Kafka topics


def create_topics(settings: Settings, names: Iterable[str], partitions: int, log_append_time: bool) -> None:
    """Fresh topics; outputs stamp each message with the broker's append time so latency is
    read from Kafka itself (input: CreateTime, set by the producer)."""
    admin = AdminClient(connections.kafka_common(settings))
    input_size, output_size = topic_sizes_to_create(settings.max_value_bytes)
    stamp = {"message.timestamp.type": "LogAppendTime" if log_append_time else "CreateTime"}
    # outputs (stamped by the broker) are sized for what the pipeline adds (flows.sizes)
    size = output_size if log_append_time else input_size
    futures = admin.create_topics(
        [
            NewTopic(
                n, num_partitions=partitions, replication_factor=1, config={**stamp, "max.message.bytes": str(size)}
            )
            for n in names
        ],
        operation_timeout=30,
    )
    for name, fut in futures.items():
        try:
            fut.result(timeout=60)
        except Exception as exc:
            raise RuntimeError(f"creating topic {name}: {exc}") from exc
    _wait_for_leaders(admin, list(names), partitions)


def _wait_for_leaders(admin: AdminClient, names: list[str], partitions: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(timeout=10).topics
        if all(
            n in md and len(md[n].partitions) == partitions and all(p.leader >= 0 for p in md[n].partitions.values())
            for n in names
        ):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics {names} have no leaders after {timeout}s")
        time.sleep(0.2)


def delete_topics(settings: Settings, prefix: str) -> list[str]:
    admin = AdminClient(connections.kafka_common(settings))
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # cleanup is best effort
                fut.result(timeout=60)
    return names


def producer_conf(settings: Settings) -> dict[str, Any]:
    return {
        **connections.kafka_common(settings),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.max.bytes": topic_sizes_to_create(settings.max_value_bytes)[0],
        "partitioner": "murmur2_random",
        "queue.buffering.max.messages": 200000,
    }


# --- the workload


class _Cid(msgspec.Struct):
    customer_id: str = ""


_CID = msgspec.json.Decoder(_Cid)


def outcome_of(rec: sample.SampleRecord, seeded: int) -> str:
    """What the contract makes of a sample record when customers 0..seeded-1 exist: the
    sample marks every good event "enriched"; uniform draws also hit unseeded ids."""
    if rec.expect != "enriched":
        return rec.expect
    assert rec.value is not None
    cid = _CID.decode(rec.value).customer_id
    return "enriched" if int(cid[1:]) < seeded else "customer_not_found"


def records(n: int, space: int, uniform: bool, seed: int, max_value_bytes: int) -> Iterator[sample.SampleRecord]:
    """`tools.sample.events` with ~400-byte events and 1% bad records across the failure
    codes (the over-the-limit record left out: at 1 MiB each it would dominate the bytes)."""
    return sample.events(
        n,
        space,
        bad_ratio=0.01,
        seed=seed,
        zipf=None if uniform else ZIPF_S,
        max_value_bytes=max_value_bytes,
        pad=PAD,
        large=False,
    )


def load(
    settings: Settings,
    topic: str,
    recs: Iterable[sample.SampleRecord],
    seeded: int,
    on_progress: Callable[[int], None] | None = None,
    outcome: Callable[[sample.SampleRecord], str] | None = None,
) -> Loaded:
    """Produce every record once and remember, from its delivery report, where it landed."""
    placed: list[tuple[int, int, int, str, int]] = []
    errors: list[str] = []
    producer = Producer(producer_conf(settings))
    size = 0
    started = time.monotonic()

    def delivered(outcome: str, crc: int) -> Callable[[KafkaError | None, Message], None]:
        def cb(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                placed.append((msg.partition(), msg.offset(), msg.timestamp()[1], outcome, crc))

        return cb

    n = 0
    for rec in recs:
        expect = outcome(rec) if outcome is not None else outcome_of(rec, seeded)
        value = rec.value
        size += len(value or b"")
        cb = delivered(expect, zlib.crc32(value) if value is not None else -1)
        while True:
            try:
                producer.produce(topic, value, rec.key, headers=rec.headers, on_delivery=cb)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        if n % 5000 == 0:
            producer.poll(0)
            if on_progress:
                on_progress(n)
    left = producer.flush(120)
    if left or errors:
        raise RuntimeError(f"loading {topic}: {left} not flushed, {len(errors)} failed, e.g. {errors[:1]}")
    loaded = Loaded(topic, n, time.monotonic() - started, size / n if n else 0)
    placed.sort()
    for p, off, ts, outcome, crc in placed:
        rows = loaded.by_partition.setdefault(p, [])
        if not rows:
            loaded.base[p] = off
        elif off != loaded.base[p] + len(rows):
            raise RuntimeError(f"loading {topic}: partition {p} has a gap before offset {off}")
        rows.append(Expected(ts, outcome, crc))
    return loaded
