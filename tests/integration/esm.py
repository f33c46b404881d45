"""A Kafka event source mapping for the Lambda handler, as AWS runs one: a member of a
consumer group that reads batches of the input topic, invokes the handler with the event
the mapping would send, commits the batch's offsets once the invocation returned, and
invokes again with the same batch while it fails (the mapping retries a failed batch until
it succeeds). Run as a process (`python -m tests.integration.esm`) by the fault matrix, so
that it can be killed like a Lambda container; SIGTERM ends it after the batch in hand.
Also the event format, for tests/integration/test_lambda.py.
"""

from __future__ import annotations

import base64
import logging
import signal
import sys
import time
from types import FrameType
from typing import Any

from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

BATCH = 500  # the mapping's BatchSize
WINDOW_S = 0.5  # its MaximumBatchingWindowInSeconds
RETRY_WAIT_S = 1.0

log = logging.getLogger("esm")


def aws_event(messages: list[Message], source: str) -> dict[str, Any]:
    """The event source mapping's event for these records. Null keys and values are left out
    in MSK events and given as null in self-managed ones, so the parser sees both forms;
    header bytes are signed, as Lambda's Java poller sends them."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in messages:
        ts_type, ts = m.timestamp()
        rec: dict[str, Any] = {
            "topic": m.topic(),
            "partition": m.partition(),
            "offset": m.offset(),
            "timestamp": ts,
            "timestampType": {TIMESTAMP_CREATE_TIME: "CREATE_TIME", TIMESTAMP_LOG_APPEND_TIME: "LOG_APPEND_TIME"}.get(
                ts_type, "NO_TIMESTAMP_TYPE"
            ),
            "headers": [
                {k: None if v is None else [b - 256 if b > 127 else b for b in v]} for k, v in m.headers() or []
            ],
        }
        for name, raw in (("key", m.key()), ("value", m.value())):
            if raw is not None:
                rec[name] = base64.b64encode(raw).decode()
            elif source == "aws:SelfManagedKafka":
                rec[name] = None
        groups.setdefault(f"{m.topic()}-{m.partition()}", []).append(rec)
    event: dict[str, Any] = {"eventSource": source, "bootstrapServers": "127.0.0.1:9092", "records": groups}
    if source == "aws:kafka":
        event["eventSourceArn"] = "arn:aws:kafka:eu-west-1:123456789012:cluster/local/0000"
    return event


class _Context:
    def __init__(self, n: int) -> None:
        self.aws_request_id = f"esm-{n}"


def _commit(consumer: Consumer, offsets: list[TopicPartition]) -> None:
    """Commit as the mapping does: a failure that may pass (a coordinator loading or moved
    after a broker restart) is retried; one that does not leaves the offsets where they were,
    and the batch comes again (at-least-once)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
            return
        except KafkaException as exc:
            err = exc.args[0]
            if time.monotonic() > deadline or not (err.retriable() or err.code() in _COMMIT_RETRIABLE):
                print(f"esm: commit failed, the batch will come again: {err}"[:300], flush=True)
                return
            time.sleep(0.5)


_COMMIT_RETRIABLE = frozenset(
    {
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._WAIT_COORD,
    }
)


def main() -> int:
    from aws_lambda.handler import handler
    from flows import connections
    from flows.settings import Settings

    settings = Settings.from_env()
    stopping = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    consumer = Consumer(
        {
            **connections.kafka_common(settings),
            "group.id": settings.consumer_group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "topic.metadata.refresh.interval.ms": 3000,
            "enable.partition.eof": True,
        }
    )
    consumer.subscribe([settings.input_topic])
    invocations = 0
    try:
        while not stopping:
            batch: list[Message] = []
            deadline = time.monotonic() + WINDOW_S
            ended: dict[int, int] = {}
            while len(batch) < BATCH and time.monotonic() < deadline and not stopping:
                for m in consumer.consume(BATCH - len(batch), 0.1):
                    if m.error() is None:
                        batch.append(m)
                        ended.pop(m.partition(), None)
                    elif m.error().code() == KafkaError._PARTITION_EOF:
                        ended[m.partition()] = m.offset()  # the position: past transaction markers
            if not batch:
                if ended:  # nothing to invoke for: the position at the end is committed
                    _commit(consumer, [TopicPartition(settings.input_topic, p, o) for p, o in ended.items()])
                continue
            event = aws_event(batch, "aws:SelfManagedKafka")
            while True:
                invocations += 1
                try:
                    handler(event, _Context(invocations))
                    break
                except Exception as exc:  # noqa: BLE001 - the mapping retries a failed invocation
                    print(f"esm: invocation failed, retrying the batch: {type(exc).__name__}: {exc}"[:300], flush=True)
                    time.sleep(RETRY_WAIT_S)
            ends: dict[int, int] = dict(ended)
            for m in batch:
                ends[m.partition()] = max(ends.get(m.partition(), 0), m.offset() + 1)
            _commit(consumer, [TopicPartition(settings.input_topic, p, o) for p, o in ends.items()])
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
