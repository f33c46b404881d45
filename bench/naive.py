"""THE BASELINE, NOT THE PRODUCT: what a typical hand-written per-record Lambda handler
does with the same contract, kept here only so the benchmark can compare against it.

For each record, one at a time: decode and validate with the standard library, one SELECT
for its customer, produce the result and flush (wait for the broker's ack), one
synchronous INSERT of its history row. Records arrive in batches of up to 100, like a
Lambda's Kafka event source mapping delivers them, but are handled one by one.

It is slow, so the benchmark runs it on a bounded subset (`--max-records`, `--max-seconds`,
whichever comes first) and takes its rate from that; it writes the next offset of each
partition where it stopped to `--report`, so the checker knows which records it owes.

    python -m bench.naive INPUT OUTPUT FAILURE --report PATH [--max-records N] [--max-seconds S]
(the keyspace and PostgreSQL come from SCYLLA_KEYSPACE and PG_DSN, as for the dataflow)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Message, Producer

from bench.kafkaloop import input_consumer, records
from flows import connections
from flows.adapters.kafka.config import producer_config
from flows.adapters.scylla.session import connect, ensure_schema, insert_cql
from flows.settings import Settings

LAMBDA_BATCH = 100
LIMITS = {"event_id": 128, "event_type": 128, "customer_id": 64}


class Reject(Exception):
    def __init__(self, code: str, stage: str, message: str) -> None:
        super().__init__(message)
        self.code, self.stage = code, stage


def validate(value: bytes | None, max_bytes: int) -> dict[str, Any]:
    """The event as a dict, or Reject with the contract's failure code."""
    if not value:
        raise Reject("empty_value", "decode", "the record has no value")
    if len(value) > max_bytes:
        raise Reject("payload_too_large", "decode", f"the value is {len(value)} bytes")
    try:
        doc = json.loads(value)
    except ValueError as exc:  # includes UnicodeDecodeError
        raise Reject("invalid_json", "decode", str(exc)) from None
    if not isinstance(doc, dict):
        raise Reject("schema_violation", "validate", "not an object")
    for name, limit in LIMITS.items():
        v = doc.get(name)
        if not isinstance(v, str) or not 1 <= len(v) <= limit:
            raise Reject("schema_violation", "validate", f"bad {name}")
    try:
        occurred = dt.datetime.fromisoformat(doc.get("occurred_at"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise Reject("schema_violation", "validate", "bad occurred_at") from None
    if occurred.tzinfo is None:
        raise Reject("schema_violation", "validate", "occurred_at has no UTC offset")
    if not isinstance(doc.setdefault("payload", {}), dict):
        raise Reject("schema_violation", "validate", "payload is not an object")
    doc["_occurred_at"] = occurred
    return doc


class Handler:
    """One connection to each dependency, opened at cold start, reused by every record."""

    def __init__(self, settings: Settings, output: str, failure: str) -> None:
        self.settings = settings
        self.output, self.failure = output, failure
        self.pg = psycopg.connect(settings.pg_dsn.get(), autocommit=True, **connections.pg_connect_kwargs(settings))
        self.producer = Producer({**producer_config(settings), "client.id": "bench-naive"})
        self.cluster = connect(settings)
        self.session = self.cluster.connect()
        ensure_schema(self.session, settings)
        self.insert = self.session.prepare(insert_cql(settings))
        self.errors: list[str] = []

    def _delivered(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def _send(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        self.producer.produce(topic, value, key, headers=headers, on_delivery=self._delivered)
        self.producer.flush()
        if self.errors:
            raise RuntimeError(f"delivery failed: {self.errors[0]}")

    def handle(self, msg: Message) -> None:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        source = [
            ("source.topic", topic.encode()),
            ("source.partition", str(partition).encode()),
            ("source.offset", str(offset).encode()),
        ]
        headers = [(k, v) for k, v in (msg.headers() or []) if not k.startswith(("source.", "error."))]
        now = dt.datetime.now(dt.UTC)
        doc: dict[str, Any] = {}
        try:
            doc = validate(msg.value(), self.settings.max_value_bytes)
            row = self.pg.execute(
                "SELECT name, segment, country, status FROM customers WHERE customer_id = %s", (doc["customer_id"],)
            ).fetchone()
            if row is None:
                raise Reject("customer_not_found", "enrich", f"no customer {doc['customer_id']!r}")
        except Reject as rej:
            self._send(
                self.failure,
                msg.key(),
                msg.value(),
                headers
                + [
                    ("error.code", rej.code.encode()),
                    ("error.stage", rej.stage.encode()),
                    ("error.message", str(rej)[:1024].encode()),
                    *source,
                    ("source.timestamp", str(msg.timestamp()[1]).encode()),
                    ("failed_at", now.isoformat().encode()),
                ],
            )
            occurred = doc.get("_occurred_at")
            self.session.execute(
                self.insert,
                (
                    doc.get("event_id") or f"{topic}:{partition}:{offset}",
                    topic,
                    partition,
                    offset,
                    "failed",
                    rej.code,
                    doc.get("event_type"),
                    doc.get("customer_id"),
                    occurred,
                    now,
                    self.failure,
                    json.dumps(doc["payload"]) if "payload" in doc else None,
                ),
            )
            return
        occurred = doc.pop("_occurred_at")
        doc["customer"] = dict(zip(("name", "segment", "country", "status"), row, strict=True))
        doc["enriched_at"] = now.isoformat().replace("+00:00", "Z")
        key = msg.key() if msg.key() is not None else doc["customer_id"].encode()
        self._send(self.output, key, json.dumps(doc).encode(), headers + source)
        self.session.execute(
            self.insert,
            (
                doc["event_id"],
                topic,
                partition,
                offset,
                "enriched",
                None,
                doc["event_type"],
                doc["customer_id"],
                occurred,
                now,
                self.output,
                json.dumps(doc["payload"]),
            ),
        )

    def close(self) -> None:
        self.producer.flush(30)
        self.cluster.shutdown()
        self.pg.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("failure")
    parser.add_argument("--report", required=True, help="JSON file: records handled, next offset per partition")
    parser.add_argument("--max-records", type=int, default=0, help="stop after this many (0: no limit)")
    parser.add_argument("--max-seconds", type=float, default=0, help="stop after this long (0: no limit)")
    args = parser.parse_args()
    settings = Settings.from_env()
    handler = Handler(settings, args.output, args.failure)
    consumer, pending = input_consumer(settings, args.input, "naive")
    next_offsets = {p: 0 for p in sorted(pending)}
    handled = 0
    started: float | None = None
    done = False
    while pending and not done:
        for msg in records(consumer, pending, LAMBDA_BATCH, 1.0):
            if started is None:
                started = time.monotonic()
            handler.handle(msg)
            handled += 1
            next_offsets[msg.partition()] = msg.offset() + 1
            if (args.max_records and handled >= args.max_records) or (
                args.max_seconds and time.monotonic() - started >= args.max_seconds
            ):
                done = True
                break
    consumer.close()
    handler.close()
    with open(args.report, "w") as f:
        json.dump(
            {
                "handled": handled,
                "seconds": round(time.monotonic() - (started or time.monotonic()), 3),
                "next_offsets": next_offsets,
            },
            f,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
