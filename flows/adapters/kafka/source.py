"""Reading the input partitions of a worker: one consumer `assign()`ed to each of them at a
position of our own (`WorkerConsumer`), and a reader per partition (`PartitionReader`).

Consumer errors that may pass (a broker restarting) are logged and ridden out; others
raise. Headers are read as bytes (`flows.adapters.kafka.headers`), so a header name that is
not UTF-8 can't stop the source. The Bytewax source (`flows.runtime.bytewax.source`) wraps
this and keeps the position in its recovery state.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from flows.adapters.kafka.config import consumer_config
from flows.adapters.kafka.errors import error_kind
from flows.adapters.kafka.headers import READER
from flows.core.model import SourceRecord
from flows.retry import Kind
from flows.settings import Settings

log = logging.getLogger(__name__)

STALL_CHECK_S = 5.0


def source_record(msg: Any, epoch: int = 0) -> SourceRecord:
    """A consumed message as the flow sees it, its headers read as bytes (a name that is not
    UTF-8 can't stop anything: `flows.adapters.kafka.headers`)."""
    headers, header_error = READER.read(msg)
    return SourceRecord(
        msg.topic(),
        msg.partition(),
        msg.offset(),
        msg.timestamp()[1],
        msg.key(),
        msg.value(),
        headers,
        header_error,
        epoch,
    )


class WorkerConsumer:
    """One Kafka consumer for every input partition a worker reads, so threads, connections
    and prefetch buffers do not grow with the number of partitions. Each partition's
    `PartitionReader` takes its records from here: a read serves whichever partitions the
    consumer returned, and records of other partitions wait in their own buffer for their
    reader (Bytewax polls a worker's partitions in turn, on the worker's thread). A
    consumer is not shared between threads."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self._consumer = Consumer(consumer_config(settings))
        self._topic = topic
        self._batch_size = settings.source_batch_size
        # read again only when little is waiting: the buffers stay within a few batches
        self._buffer_limit = 4 * settings.source_batch_size
        self._buffers: dict[int, collections.deque[SourceRecord]] = {}
        self._buffered = 0
        self._eof: set[int] = set()
        self.closed = False

    @property
    def consumer(self) -> Consumer:
        """The consumer (watermarks, for the readers)."""
        return self._consumer

    def add(self, partition: int, position: int) -> None:
        """Read `partition` from `position` on."""
        self._buffers[partition] = collections.deque()
        self._consumer.incremental_assign([TopicPartition(self._topic, partition, position)])

    def reassign(self, partition: int, position: int) -> None:
        """Assign `partition` afresh at `position` (a stalled fetch), dropping its buffer."""
        self._buffered -= len(self._buffers[partition])
        self._buffers[partition].clear()
        self._consumer.incremental_unassign([TopicPartition(self._topic, partition)])
        self._consumer.incremental_assign([TopicPartition(self._topic, partition, position)])

    def remove(self, partition: int) -> bool:
        """Stop reading `partition`; True when no partition is left (then closed)."""
        buffer = self._buffers.pop(partition, None)
        if buffer is not None:
            self._buffered -= len(buffer)
            self._consumer.incremental_unassign([TopicPartition(self._topic, partition)])
        if self._buffers:
            return False
        self._consumer.close()
        self.closed = True
        return True

    def at_end(self, partition: int) -> bool:
        """The partition reached its end (STOP_AT_END) and its buffer is empty."""
        return partition in self._eof and not self._buffers[partition]

    def take(self, partition: int) -> list[SourceRecord]:
        """Up to a batch of `partition`'s records (maybe none)."""
        buffer = self._buffers[partition]
        if not buffer and self._buffered < self._buffer_limit:
            self._read()
        n = min(len(buffer), self._batch_size)
        self._buffered -= n
        popleft = buffer.popleft
        return [popleft() for _ in range(n)]

    def _read(self) -> None:
        msgs: list[Any] = self._consumer.consume(self._batch_size, 0)  # Message types every field optional
        buffers, eof = self._buffers, self._eof
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    eof.add(msg.partition())
                    continue
                if error_kind(err) is not Kind.RETRIABLE:
                    raise KafkaException(err)
                log.warning("kafka consumer error, retrying", extra={"fields": {"error": str(err)}})
                continue
            buffer = buffers.get(msg.partition())
            if buffer is None:
                continue  # prefetched before its partition was removed
            eof.discard(msg.partition())
            buffer.append(source_record(msg))
            self._buffered += 1


class PartitionReader:
    """Batches of records from one partition, from `resume` (None: the beginning) on,
    taken from the worker's `WorkerConsumer`."""

    def __init__(
        self,
        shared: WorkerConsumer,
        topic: str,
        partition: int,
        resume: int | None,
        stopping: threading.Event | None = None,
        on_input: Callable[[int], None] | None = None,
        on_high: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self._shared = shared
        self._topic, self._partition = topic, partition
        self.position = OFFSET_BEGINNING if resume is None else resume
        shared.add(partition, self.position)
        self._where = f"{topic}:{partition}"
        self._stopping = stopping or threading.Event()
        self._on_input = on_input
        self._on_high = on_high
        self._last_data = self._last_check = time.monotonic()

    @property
    def at_end(self) -> bool:
        """The partition is drained (STOP_AT_END)."""
        return self._shared.at_end(self._partition)

    @property
    def done(self) -> bool:
        """The partition is drained (with STOP_AT_END), or the process is stopping."""
        return self.at_end or self._stopping.is_set()

    def next_batch(self) -> list[SourceRecord]:
        """The records available now (maybe none); the position moves past them."""
        batch = self._shared.take(self._partition)
        if batch:
            self.position = batch[-1].offset + 1
            self._last_data = time.monotonic()
            if self._on_input is not None:
                self._on_input(len(batch))
            if self._on_high is not None:
                tp = TopicPartition(self._topic, self._partition)
                _, high = self._shared.consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0:
                    self._on_high(self._topic, self._partition, high)
        else:
            self._check_stalled()
        return batch

    def _check_stalled(self) -> None:
        """After a broker restart, now and then: the consumer of an assigned
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
            low, high = self._shared.consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
        except KafkaException:
            return  # the broker is away: librdkafka reconnects by itself
        waiting = high > self.position if self.position >= 0 else high > low
        if waiting:
            log.warning(
                "kafka partition stalled, assigning it again",
                extra={"fields": {"where": self._where, "position": self.position, "end_offset": high}},
            )
            self._shared.reassign(self._partition, self.position)
            self._last_data = now

    def close(self) -> None:
        """Stop reading the partition (the worker's consumer closes with its last one)."""
        self._shared.remove(self._partition)
