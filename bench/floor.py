"""Benchmark variant: the I/O floor, the least the dataflow's job costs in Python with the
same drivers. It consumes the input topic in batches, produces each record's bytes (key,
value, headers) to the output topic, and writes one history row per record (its
coordinates, a status and the raw value as payload), and does nothing else: no decoding,
no validation, no lookup, no enrichment. Its I/O is the dataflow's best case:

- rows serialized without `bind()` (the dataflow's own codec), unlogged batches of 50;
- up to 32 CQL batches in flight across consume batches, and Kafka deliveries and CQL
  acknowledgements awaited only at the end (the dataflow must wait before it snapshots).

Partition p goes to partition p in order, so the benchmark pairs outputs with inputs as for
the passthrough; the history rows are counted by coordinates.

    python -m bench.floor INPUT_TOPIC OUTPUT_TOPIC   (SCYLLA_KEYSPACE: where the rows go)
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import sys
from typing import Any

from cassandra.query import BatchStatement, BatchType, BoundStatement

from bench.kafkaloop import Copier, input_consumer, records
from flows.adapters.scylla.codec import encode_row
from flows.adapters.scylla.session import connect, ensure_schema, insert_cql
from flows.settings import Settings

ROWS_PER_BATCH = 50
IN_FLIGHT = 32


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output")
    args = parser.parse_args()
    settings = Settings.from_env()
    copier = Copier(settings, args.output, "floor")
    cluster = connect(settings)
    session = cluster.connect()
    ensure_schema(session, settings)
    insert = session.prepare(insert_cql(settings))
    consumer, pending = input_consumer(
        settings, args.input, "floor", **{"queued.max.messages.kbytes": 16384, "fetch.wait.max.ms": 50}
    )
    in_flight: collections.deque[Any] = collections.deque()
    topic, output = args.input, args.output
    while pending:
        rows: list[list[bytes | None]] = []
        now = dt.datetime.now(dt.UTC)
        for msg in records(consumer, pending, 1000, 0.5):
            copier.copy(msg)
            p, off, value = msg.partition(), msg.offset(), msg.value()
            payload = value.decode("utf-8", "replace") if value is not None else None
            rows.append(
                encode_row(
                    (f"{topic}/{p}/{off}", topic, p, off, "copied", None, None, None, None, now, output, payload)
                )
            )
        for i in range(0, len(rows), ROWS_PER_BATCH):
            batch = BatchStatement(BatchType.UNLOGGED)
            for values in rows[i : i + ROWS_PER_BATCH]:
                bound = BoundStatement(insert)
                bound.values = values
                batch.add(bound)
            if len(in_flight) >= IN_FLIGHT:
                in_flight.popleft().result()
            in_flight.append(session.execute_async(batch))
        copier.producer.poll(0)
    while in_flight:
        in_flight.popleft().result()
    status = copier.finish()
    consumer.close()
    cluster.shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
