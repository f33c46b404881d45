"""Kafka input and outputs on confluent-kafka, in place of Bytewax's bundled connector.

Input: one consumer per partition via `assign()` (no consumer group); the next offset to
read is the partition's recovery state, so a restart resumes from the last snapshot.
Consumer errors that may pass (a broker restarting) are logged and ridden out; fatal ones
raise. Before listing partitions the source runs the start-up checks with a timeout
(Bytewax's own KafkaSource asks for metadata without one and can hang forever).

Outputs: a sink on an idempotent Producer (`acks=all`) with a delivery callback on every
message; a batch is done only when every message in it is acknowledged, and a delivery
error raises, so the process fails loudly instead of losing a record. (Bytewax's
KafkaSink drops failed deliveries silently.)
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from flows.lifecycle import STOPPING
from flows.model import OutMessage, Routed, SourceRecord
from flows.retry import gave_up
from flows.settings import Settings
from flows.stats import STATS

log = logging.getLogger(__name__)

STALL_CHECK_S = 5.0
IDLE_WAIT = dt.timedelta(milliseconds=5)  # an idle partition is polled again after this
# room for the record headers the pipeline adds on top of the largest accepted value
HEADER_ROOM = 64 * 1024


def consumer_config(settings: Settings) -> dict[str, Any]:
    return {
        **settings.kafka_common(),
        "group.id": "enrichment-dataflow-unused",  # required by the client; no group is joined
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": settings.stop_at_end,
        # prefetch per partition: a few source batches, not the 64 MiB default (memory stays flat)
        "queued.max.messages.kbytes": 4096,
        "fetch.wait.max.ms": 50,
        "socket.keepalive.enable": True,
    }


def producer_config(settings: Settings) -> dict[str, Any]:
    return {
        **settings.kafka_common(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "compression.type": "none",
        # Java clients' default, so keyed records land where other producers put them
        "partitioner": "murmur2_random",
        "message.max.bytes": settings.max_value_bytes + HEADER_ROOM,
        # librdkafka keeps retrying a delivery until this expires: the same deadline as
        # every other dependency; past it the sink raises and the process exits
        "message.timeout.ms": int(settings.retry_deadline_seconds * 1000),
    }


class _InputPartition(StatefulSourcePartition[SourceRecord, int]):
    def __init__(self, settings: Settings, topic: str, partition: int, resume: int | None) -> None:
        self._consumer = Consumer(consumer_config(settings))
        self._topic, self._partition = topic, partition
        self._next = OFFSET_BEGINNING if resume is None else resume
        self._consumer.assign([TopicPartition(topic, partition, self._next)])
        self._batch_size = settings.source_batch_size
        self._where = f"{topic}:{partition}"
        self._eof = False
        self._awake: dt.datetime | None = None
        self._last_data = self._last_check = time.monotonic()

    def _check_stalled(self) -> None:
        """Seen here once in a while after a broker restart: the consumer of an assigned
        partition fetches nothing any more although records wait behind its position, and
        reports no error. When a partition has been idle for STALL_CHECK_S, compare the
        position with the broker's end offset and, if records wait, assign it afresh at the
        position (nothing is skipped or read twice: the position is our own)."""
        now = time.monotonic()
        if now - self._last_data < STALL_CHECK_S or now - self._last_check < STALL_CHECK_S:
            return
        self._last_check = now
        tp = TopicPartition(self._topic, self._partition)
        try:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
        except KafkaException:
            return  # the broker is away: librdkafka reconnects by itself
        waiting = high > self._next if self._next >= 0 else high > low
        if waiting:
            log.warning("kafka partition stalled, assigning it again", extra={"fields": {
                "where": self._where, "position": self._next, "end_offset": high}})
            self._consumer.unassign()
            self._consumer.assign([TopicPartition(self._topic, self._partition, self._next)])
            self._last_data = now

    def next_batch(self) -> list[SourceRecord]:
        if self._eof or STOPPING.is_set():
            raise StopIteration
        msgs = self._consumer.consume(self._batch_size, 0)
        batch: list[SourceRecord] = []
        append = batch.append
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = True
                    break
                if err.fatal() or not (err.retriable() or err.code() in _TRANSIENT):
                    raise KafkaException(err)
                log.warning("kafka consumer error, retrying", extra={"fields": {
                    "where": self._where, "error": str(err)}})
                continue
            append(SourceRecord(msg.topic(), msg.partition(), msg.offset(),  # type: ignore[arg-type]
                                msg.timestamp()[1], msg.key(), msg.value(), msg.headers() or []))  # type: ignore[arg-type]
        if batch:
            self._next = batch[-1].offset + 1
            STATS.add_input(len(batch))
            self._awake = None
            self._last_data = time.monotonic()
        else:
            self._check_stalled()
            self._awake = dt.datetime.now(dt.UTC) + IDLE_WAIT
        return batch

    def next_awake(self) -> dt.datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._next

    def close(self) -> None:
        self._consumer.close()


_TRANSIENT = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
                        KafkaError._RESOLVE, KafkaError.NOT_LEADER_FOR_PARTITION,
                        KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART})


class KafkaInput(FixedPartitionedSource[SourceRecord, int]):
    """Every partition of the input topic; `preflight` runs (and may exit) before listing."""

    def __init__(self, settings: Settings, list_partitions: Callable[[], list[int]]) -> None:
        self.settings = settings
        self._list_partitions = list_partitions

    def list_parts(self) -> list[str]:
        return [f"{p}-{self.settings.input_topic}" for p in self._list_partitions()]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _InputPartition:
        idx, topic = for_part.split("-", 1)
        return _InputPartition(self.settings, topic, int(idx), resume_state)


class DeliveryFailed(RuntimeError):
    """Kafka did not acknowledge a message: raised so nothing is lost silently."""


class _Acks:
    """Delivery reports of one `write` call."""

    __slots__ = ("acked", "errors")

    def __init__(self) -> None:
        self.acked = 0
        self.errors: list[str] = []

    def __call__(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            self.acked += 1
        else:
            self.errors.append(f"{msg.topic()}: {err}")


class KafkaWriter:
    """Produces messages and returns only when Kafka acknowledged every one of them;
    raises `DeliveryFailed` otherwise. Shared by the dataflow's sinks and the Lambda."""

    def __init__(self, settings: Settings, client_id: str = "enrichment") -> None:
        conf = producer_config(settings)
        conf["client.id"] = client_id
        self._producer = Producer(conf)
        self._timeout_s = settings.retry_deadline_seconds

    def write(self, messages: Sequence[OutMessage]) -> None:
        if not messages:
            return
        acks = _Acks()  # per call: a late report of an earlier batch can't count for this one
        produce, poll = self._producer.produce, self._producer.poll
        for m in messages:
            while True:
                try:
                    produce(m.topic, m.value, m.key, headers=m.headers, on_delivery=acks)  # type: ignore[arg-type]
                    break
                except BufferError:  # local queue full: serve callbacks, then try again
                    poll(0.05)
        self._wait(acks, len(messages))

    def _wait(self, acks: _Acks, expected: int) -> None:
        deadline = time.monotonic() + self._timeout_s + 30
        while acks.acked + len(acks.errors) < expected and not acks.errors:
            self._producer.flush(1.0)
            if time.monotonic() > deadline:
                raise gave_up(DeliveryFailed(f"{expected - acks.acked} of {expected} messages not "
                                             f"acknowledged after {self._timeout_s:.0f}s"))
        if acks.errors:
            raise gave_up(DeliveryFailed(f"{len(acks.errors)} message(s) not delivered, "
                                         f"first: {acks.errors[0]}"))

    def close(self) -> None:
        self._producer.flush(self._timeout_s)


class _OutputPartition(StatelessSinkPartition[Routed]):
    def __init__(self, writer: KafkaWriter) -> None:
        self.writer = writer

    def write_batch(self, items: list[Routed]) -> None:
        self.writer.write([r.message for r in items])

    def close(self) -> None:
        self.writer.close()


class KafkaOutput(DynamicSink[Routed]):
    """Produces each item's `message`; one producer per worker, built with the worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _OutputPartition:
        return _OutputPartition(KafkaWriter(self.settings, f"enrichment-{step_id}-{worker_index}"))
