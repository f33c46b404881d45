"""Reading the input partitions of a worker: one consumer `assign()`ed to all of them at
positions of our own (`WorkerConsumer`), and a reader per partition (`PartitionReader`).

Threads, connections and prefetch memory do not grow with the number of partitions, and
neither does the cost of a batch: a reader's batch is whatever the consumer has, from any
of the worker's partitions (a partition's reader is where Bytewax keeps the partition's
recovery state, not a channel of its records; `flows.runtime.bytewax.source` derives that
state from what the outputs finished, not from what was read).

Consumer errors that may pass (a broker restarting) are logged and ridden out; others
raise. Headers are read as bytes (`flows.adapters.kafka.headers`), so a header name that is
not UTF-8 can't stop the source.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from flows.adapters.kafka.config import consumer_config, metadata_refresh_s
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
    """One Kafka consumer for every input partition a worker reads. `take` returns what the
    consumer has, from any of them, and keeps each partition's position (the offset after
    the last record read). Only one partition's reader reads (the lowest partition still
    read): Bytewax polls every partition of a worker in turn, and were each to take a batch
    the worker would read as many batches at once as it has partitions. A consumer is not
    shared between threads: Bytewax builds and polls a worker's partitions on the worker's
    thread."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        on_input: Callable[[int], None] | None = None,
        on_high: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self._consumer = Consumer(consumer_config(settings))
        self._topic = topic
        self._batch_size = settings.source_batch_size
        self.stop_at_end = settings.stop_at_end
        self._on_input = on_input
        self._on_high = on_high
        self.positions: dict[int, int] = {}
        # a partition reported at its end -> the consumer's position there, which is past
        # transaction markers and aborted records (`positions` is after the last record read)
        self.ends: dict[int, int] = {}
        self.reader: int | None = None  # the partition whose reader reads
        self._eof: set[int] = set()
        self.last_data = time.monotonic()  # when a take last returned records
        self.closed = False
        self._refresh_s = metadata_refresh_s(settings)
        self._count: int | None = None
        self._counted = float("-inf")

    def partition_count(self) -> int | None:
        """The input topic's partitions now, asked of the broker once per metadata refresh
        interval (None: not known)."""
        now = time.monotonic()
        if now - self._counted >= self._refresh_s:
            self._counted = now
            try:
                meta = self._consumer.list_topics(self._topic, timeout=5)
                self._count = len(meta.topics[self._topic].partitions)
            except (KafkaException, KeyError) as exc:
                log.info("input topic's partitions not known now", extra={"fields": {"error": str(exc)[:200]}})
        return self._count

    @property
    def consumer(self) -> Consumer:
        """The consumer (watermarks, for the readers)."""
        return self._consumer

    def add(self, partition: int, position: int) -> None:
        """Read `partition` from `position` on."""
        self.positions[partition] = position
        self.reader = min(self.positions)
        self._consumer.incremental_assign([TopicPartition(self._topic, partition, position)])

    def reassign(self, partition: int, position: int) -> None:
        """Assign `partition` afresh at `position` (a stalled fetch)."""
        self.ends.pop(partition, None)
        self._consumer.incremental_unassign([TopicPartition(self._topic, partition)])
        self._consumer.incremental_assign([TopicPartition(self._topic, partition, position)])

    def remove(self, partition: int) -> bool:
        """Stop reading `partition`; True when no partition is left (then closed)."""
        self.ends.pop(partition, None)
        if self.positions.pop(partition, None) is not None:
            self._consumer.incremental_unassign([TopicPartition(self._topic, partition)])
        self.reader = min(self.positions) if self.positions else None
        if self.positions or self.closed:
            return False
        self._consumer.close()
        self.closed = True
        return True

    def at_end(self, partition: int) -> bool:
        """The partition reached its end (with STOP_AT_END): its end was reported, and
        everything up to the end offset the consumer knows was read (an end reported by a
        fetch before the partition was assigned again is not its end)."""
        if partition not in self._eof:
            return False
        position = self.ends.get(partition, self.positions.get(partition, OFFSET_BEGINNING))
        low, high = self._consumer.get_watermark_offsets(TopicPartition(self._topic, partition), cached=True)
        if high < 0:
            return True  # no end offset known: trust the report
        if position >= high or (position < 0 and high <= low):
            return True
        self._eof.discard(partition)
        self.ends.pop(partition, None)
        return False

    def take(self) -> list[SourceRecord]:
        """Up to a batch of records, of any of the partitions (maybe none)."""
        msgs: list[Any] = self._consumer.consume(self._batch_size, 0)  # Message types every field optional
        if not msgs:
            return []
        batch: list[SourceRecord] = []
        append = batch.append
        positions, eof, ends = self.positions, self._eof, self.ends
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if msg.partition() in positions:
                        eof.add(msg.partition())
                        ends[msg.partition()] = msg.offset()
                    continue
                if error_kind(err) is not Kind.RETRIABLE:
                    raise KafkaException(err)
                log.warning("kafka consumer error, retrying", extra={"fields": {"error": str(err)}})
                continue
            partition = msg.partition()
            if partition not in positions:
                continue  # prefetched before its partition was removed
            eof.discard(partition)
            ends.pop(partition, None)
            record = source_record(msg)
            positions[partition] = record.offset + 1
            append(record)
        if batch:
            self.last_data = time.monotonic()
            self._observe(batch)
        return batch

    def _observe(self, batch: list[SourceRecord]) -> None:
        if self._on_input is not None:
            self._on_input(len(batch))
        if self._on_high is not None:
            for partition in {r.partition for r in batch}:
                tp = TopicPartition(self._topic, partition)
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0:
                    self._on_high(self._topic, partition, high)


class PartitionReader:
    """One input partition of a worker, from `resume` (None: the beginning) on: its batches
    are the worker's (`WorkerConsumer.take`), of any partition; `position` is this
    partition's (the offset after its last record read)."""

    def __init__(
        self,
        shared: WorkerConsumer,
        topic: str,
        partition: int,
        resume: int | None,
        stopping: threading.Event | None = None,
    ) -> None:
        self._shared = shared
        self._topic, self._partition = topic, partition
        shared.add(partition, OFFSET_BEGINNING if resume is None else resume)
        self._where = f"{topic}:{partition}"
        self._stopping = stopping or threading.Event()
        self._last_check = time.monotonic()

    @property
    def position(self) -> int:
        """The offset after the partition's last record read."""
        return self._shared.positions.get(self._partition, OFFSET_BEGINNING)

    @property
    def shared(self) -> WorkerConsumer:
        """The worker's consumer this partition is read by."""
        return self._shared

    @property
    def end_position(self) -> int | None:
        """The consumer's position at the partition's end, when it was reported there (past
        transaction markers and aborted records, unlike `position`)."""
        return self._shared.ends.get(self._partition)

    @property
    def reads(self) -> bool:
        """This partition's reader is the one reading for the worker."""
        return self._shared.reader == self._partition

    @property
    def at_end(self) -> bool:
        """The partition is drained (STOP_AT_END)."""
        return self._shared.at_end(self._partition)

    @property
    def done(self) -> bool:
        """The partition is drained (with STOP_AT_END), or the process is stopping."""
        return self._stopping.is_set() or (self._shared.stop_at_end and self.at_end)

    def next_batch(self) -> list[SourceRecord]:
        """The records the worker's consumer has now, of any partition (maybe none; always
        none but for the worker's reading partition)."""
        batch = self._shared.take() if self.reads else []
        if not batch:
            self._check_stalled()
        return batch

    def _check_stalled(self) -> None:
        """After a broker restart, now and then: the consumer of an assigned
        partition fetches nothing any more although records wait behind its position, and
        reports no error. When the worker's consumer has returned nothing for STALL_CHECK_S
        (not merely this partition: with a backlog the consumer serves a few partitions at
        a time, and the others wait their turn), compare the position with the broker's end
        offset and, if records wait, assign the partition afresh at the position (nothing is
        skipped or read twice: the position is our own)."""
        now = time.monotonic()
        if now - self._shared.last_data < STALL_CHECK_S or now - self._last_check < STALL_CHECK_S:
            return
        self._last_check = now
        tp = TopicPartition(self._topic, self._partition)
        try:
            low, high = self._shared.consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
        except KafkaException:
            return  # the broker is away: librdkafka reconnects by itself
        position = self.position
        waiting = high > position if position >= 0 else high > low
        if waiting:
            log.warning(
                "kafka partition stalled, assigning it again",
                extra={"fields": {"where": self._where, "position": position, "end_offset": high}},
            )
            self._shared.reassign(self._partition, position)

    def close(self) -> None:
        """Stop reading the partition (the worker's consumer closes with its last one)."""
        self._shared.remove(self._partition)
