"""Reading bounded slices of Kafka topics for the operator tools.

Each read has an end fixed before it starts (the high watermarks, or offsets found by time),
so a scan of a live topic finishes. No consumer group is joined and nothing is committed:
the tools must not disturb the dataflow or any other consumer.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Generator, Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from flows import connections
from flows.adapters.kafka.headers import READER
from flows.adapters.kafka.topics import check_kafka
from flows.core.model import SourceRecord
from flows.errors import PreflightError
from flows.settings import Settings
from ops.errors import FAILED, USAGE, OpsError


def header_map(record: SourceRecord) -> dict[str, str]:
    """Header values as text, last one winning; undecodable bytes replaced rather than
    failing, since these topics may hold anything producers sent."""
    return {k: v.decode("utf-8", "replace") if v is not None else "" for k, v in record.headers}


def record(msg: Message) -> SourceRecord:
    """The record of a consumed message. Headers go through the dataflow's reader, before
    anything calls `msg.headers()`: the client's own call fails on a header name that is
    not UTF-8 (a SystemError, sometimes raised only at a later call) and frees the raw
    headers, so it is never called here."""
    raw: Any = msg
    headers, header_error = READER.read(msg)
    return SourceRecord(
        raw.topic(),
        raw.partition(),
        raw.offset(),
        int(raw.timestamp()[1]),
        raw.key(),
        raw.value(),
        headers,
        header_error,
    )


# librdkafka's own log lines (connection refused, retries...) go here, not to stderr: the
# tools report failures as one line; `--debug` lets them through
CLIENT_LOG = logging.getLogger("ops.librdkafka")

Window = tuple[int, int]  # half-open [start, end) offsets
STALL_S = 60.0
_RAISE = frozenset(
    {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED}
)


def check_topics(settings: Settings, topics: Iterable[str]) -> None:
    """Kafka answers and every topic exists, before anything is read or written (status 2):
    the dataflow's own check, with the client's log lines kept off stderr."""
    try:
        check_kafka(settings, dict.fromkeys(topics), client={"logger": CLIENT_LOG})
    except PreflightError as exc:
        raise OpsError(str(exc), USAGE) from None


def open_consumer(settings: Settings) -> Consumer:
    """A consumer for assigned partitions only: it joins no group and commits nothing."""
    return Consumer(
        {
            **connections.kafka_common(settings),
            "group.id": f"enrichment-ops-{uuid.uuid4().hex[:12]}",  # required by the client; never joined
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # retention may delete the first offsets between listing and fetching: start at the
            # first one kept, never jump to the end
            "auto.offset.reset": "earliest",
            "socket.connection.setup.timeout.ms": 5000,
            "logger": CLIENT_LOG,
        }
    )


def partitions(consumer: Consumer, topic: str, timeout: float) -> list[int]:
    """The topic's partition numbers, sorted; OpsError (status 2) when the topic does not exist."""
    meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise OpsError(f"Kafka topic '{topic}' does not exist", USAGE)
    return sorted(meta.partitions)


def cluster_id(consumer: Consumer, timeout: float) -> str:
    """The Kafka cluster's id: part of the replay state's key, so clusters are told apart."""
    return str(consumer.list_topics(timeout=timeout).cluster_id)


def topic_id(settings: Settings, topic: str, timeout: float) -> str:
    """The topic's id: tells a topic from an older one of the same name, deleted and recreated."""
    conf: dict[str, Any] = {**connections.kafka_common(settings), "logger": CLIENT_LOG}
    admin = AdminClient(conf)
    futures = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)
    return str(futures[topic].result().topic_id)


def watermarks(consumer: Consumer, topic: str, parts: Iterable[int], timeout: float) -> dict[int, Window]:
    """Per partition: (first offset kept, next offset to be written)."""
    out: dict[int, Window] = {}
    for p in parts:
        lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        out[p] = (lo, hi)
    return out


def offsets_at(consumer: Consumer, topic: str, parts: Iterable[int], ms: int, timeout: float) -> dict[int, int | None]:
    """Per partition, the first offset whose timestamp is at or after `ms` (None: none is)."""
    found = consumer.offsets_for_times([TopicPartition(topic, p, max(0, ms)) for p in parts], timeout=timeout)
    out: dict[int, int | None] = {}
    for tp in found:
        if tp.error is not None:
            raise KafkaException(tp.error)
        out[tp.partition] = tp.offset if tp.offset >= 0 else None
    return out


def scan(
    consumer: Consumer, topic: str, windows: dict[int, Window], stall_s: float = STALL_S
) -> Generator[SourceRecord, None, None]:
    """Every record in each partition's window, partitions interleaved. A window's end may
    fall on an offset without a record (a transaction marker, a compacted record): the
    partition ends at the first offset at or past it, or at its current end."""
    todo = {p: w for p, w in windows.items() if w[1] > w[0]}
    if not todo:
        return
    consumer.assign([TopicPartition(topic, p, w[0]) for p, w in todo.items()])
    last = time.monotonic()
    try:
        while todo:
            msgs = consumer.consume(500, 0.5)
            if not msgs:
                if time.monotonic() - last > stall_s:
                    raise OpsError(
                        f"reading {topic}: nothing received for {stall_s:.0f}s from partitions {sorted(todo)}", FAILED
                    )
                continue
            last = time.monotonic()
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    ended = msg.partition()
                    if err.code() == KafkaError._PARTITION_EOF and ended is not None:
                        todo.pop(ended, None)
                    elif err.fatal() or err.code() in _RAISE:
                        raise KafkaException(err)
                    continue  # transient: the client reconnects by itself; a stall raises above
                rec = record(msg)
                p, off = rec.partition, rec.offset
                win = todo.get(p)
                if win is None:
                    continue
                if off >= win[1]:
                    del todo[p]
                    continue
                yield rec
                if off + 1 >= win[1]:
                    todo.pop(p, None)
    finally:
        consumer.unassign()
