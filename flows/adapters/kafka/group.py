"""Reading the input as a member of CONSUMER_GROUP (exactly-once mode): Kafka assigns the
partitions, so adding or losing a process rebalances them instead of restarting a cluster,
and a partition resumes from the group's committed offset (no recovery volume).

Records are read `read_committed` and stamped with their partition's assignment epoch: a
partition that is revoked and assigned again gets a new one, so records read under an old
assignment (still on their way to the outputs) can be told apart and dropped; their owner
re-reads them from the committed offset. Rebalance events reach a `listener` (the
transactions, `flows.adapters.kafka.transactions`): before partitions are handed over the
open transaction commits; when they are lost (this member was thrown out of the group) it
aborts. Callbacks run inside `next_batch`, on the worker's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from flows.adapters.kafka.config import consumer_config
from flows.adapters.kafka.errors import error_kind
from flows.adapters.kafka.source import source_record
from flows.core.model import SourceRecord
from flows.retry import Kind
from flows.settings import Settings

log = logging.getLogger(__name__)

TOPIC_CHECK_S = 1.0  # STOP_AT_END: how often a drained member asks whether the others are


class RebalanceListener(Protocol):
    """What must happen before partitions are handed over, or after they were lost."""

    def revoked(self, partitions: Sequence[int]) -> None:
        """Partitions are about to go to another member: commit what was done for them."""

    def lost(self, partitions: Sequence[int]) -> None:
        """Partitions were taken away already: nothing done for them may commit."""


def group_consumer_config(settings: Settings, client: str) -> dict[str, Any]:
    """A group member reading committed data, committing only inside transactions."""
    return {
        **consumer_config(settings),
        "group.id": settings.consumer_group,
        "client.id": client,
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": settings.kafka_session_timeout_ms,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }


class GroupReader:
    """Batches of records from whatever partitions the group assigns this member."""

    def __init__(
        self,
        settings: Settings,
        client: str,
        stopping: threading.Event | None = None,
        on_input: Callable[[int], None] | None = None,
        on_high: Callable[[str, int, int], None] | None = None,
        on_forget: Callable[[str, list[int]], None] | None = None,
        consumer: Any = None,
    ) -> None:
        self._topic = settings.input_topic
        self._consumer = consumer if consumer is not None else Consumer(group_consumer_config(settings, client))
        self._batch_size = settings.source_batch_size
        self._stop_at_end = settings.stop_at_end
        self._stopping = stopping or threading.Event()
        self._on_input = on_input
        self._on_high = on_high
        self._on_forget = on_forget
        self.listener: RebalanceListener | None = None
        self.epochs: dict[int, int] = {}  # owned partition -> its assignment epoch
        self._next_epoch = 1
        self._at_end: set[int] = set()
        self._first: dict[int, int] = {}  # owned partition -> first offset read under its epoch
        self._read: dict[int, int] = {}  # owned partition -> the offset after its last record read
        self._ends: dict[int, int] = {}  # owned partition at its end -> the consumer's position there
        self._topic_checked = 0.0
        self._topic_drained = False
        self._consumer.subscribe([self._topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost)

    @property
    def drained(self) -> bool:
        """STOP_AT_END, and every partition this member owns read to its end (the others'
        may not be yet: see `done`)."""
        return self._stop_at_end and set(self.epochs) <= self._at_end

    @property
    def done(self) -> bool:
        """Stopping, or (STOP_AT_END) the whole input drained: every partition this member
        owns read to its end, and every other partition of the topic committed by the group
        up to its end. A member that owns nothing, or whose partitions are drained while
        another member's are not (or while a killed member's wait for the group to notice),
        goes on: it may yet be given them."""
        if self._stopping.is_set():
            return True
        if not self.drained:
            return False
        now = time.monotonic()
        if not self._topic_drained and now - self._topic_checked >= TOPIC_CHECK_S:
            self._topic_checked = now
            self._topic_drained = self._others_drained()
        return self._topic_drained

    def _others_drained(self) -> bool:
        """Every partition of the topic this member does not own has the group's committed
        offset at its end (or holds no record)."""
        try:
            meta = self._consumer.list_topics(self._topic, timeout=5)
            partitions = sorted(meta.topics[self._topic].partitions)
            others = [TopicPartition(self._topic, p) for p in partitions if p not in self.epochs]
            if not others:
                return True
            committed = {tp.partition: tp.offset for tp in self._consumer.committed(others, timeout=5)}
            for tp in others:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                if high > low and committed.get(tp.partition, -1) < high:
                    return False
        except KafkaException as exc:
            log.info("input topic's end not known yet", extra={"fields": {"error": str(exc)[:300]}})
            return False
        return True

    def skippable(self, partition: int, done: int | None) -> int | None:
        """The consumer's position in `partition` when it is read to its end and every record
        read is covered by `done` (the offset committed or in the open transaction), and the
        position is past `done`: transaction markers or aborted records the flow never gets.
        Committing it lets the group's lag reach 0 (Kafka Streams does the same, KAFKA-6607)."""
        end = self._ends.get(partition)
        if end is None or (done is not None and end <= done):
            return None
        read = self._read.get(partition)
        if read is not None and (done is None or done < read):
            return None
        return end

    def read_up_to(self, partition: int) -> int | None:
        """The offset after the last record read of an owned partition under its current
        epoch (None: none read yet)."""
        return self._read.get(partition)

    def current(self, partition: int, epoch: int) -> bool:
        """Whether a record read under this epoch belongs to this member's assignment now."""
        return self.epochs.get(partition) == epoch

    def group_metadata(self) -> Any:
        """The consumer's group metadata, for `send_offsets_to_transaction` (KIP-447)."""
        return self._consumer.consumer_group_metadata()

    def committed(self, timeout: float) -> dict[int, int]:
        """The group's committed offsets of the owned partitions, as the broker has them
        (after a commit whose outcome is unknown)."""
        found = self._consumer.committed([TopicPartition(self._topic, p) for p in self.epochs], timeout=timeout)
        return {tp.partition: tp.offset for tp in found if tp.offset >= 0}

    def rewind(self, committed: dict[int, int]) -> None:
        """Read the owned partitions again from these offsets (where this member last
        committed), or from the first record read since they were assigned, under new epochs:
        what was read before is dropped downstream. Needs no broker: a rewind follows a
        failed commit, when the group's coordinator may be the thing that is gone."""
        for partition in list(self.epochs):
            offset = committed.get(partition, self._first.get(partition))
            self.epochs[partition] = self._new_epoch()
            self._at_end.discard(partition)
            self._first.pop(partition, None)
            self._read.pop(partition, None)
            self._ends.pop(partition, None)
            if offset is not None:
                self._consumer.seek(TopicPartition(self._topic, partition, offset))
                self._first[partition] = offset

    def next_batch(self) -> list[SourceRecord]:
        """The records available now (maybe none)."""
        msgs: list[Any] = self._consumer.consume(self._batch_size, 0)
        batch: list[SourceRecord] = []
        append = batch.append
        epochs = self.epochs
        first = self._first
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if msg.partition() in epochs:
                        self._at_end.add(msg.partition())
                        self._ends[msg.partition()] = msg.offset()  # the position: past markers too
                    continue
                if error_kind(err) is not Kind.RETRIABLE:
                    raise KafkaException(err)
                log.warning("kafka consumer error, retrying", extra={"fields": {"error": str(err)}})
                continue
            partition = msg.partition()
            epoch = epochs.get(partition)
            if epoch is None:
                continue  # a partition revoked while its records were prefetched
            self._at_end.discard(partition)
            self._ends.pop(partition, None)
            if partition not in first:
                first[partition] = msg.offset()
            self._read[partition] = msg.offset() + 1
            append(source_record(msg, epoch))
        if batch and self._on_input is not None:
            self._on_input(len(batch))
        if batch and self._on_high is not None:
            for partition in {r.partition for r in batch}:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(self._topic, partition), cached=True)
                if high >= 0:
                    self._on_high(self._topic, partition, high)
        return batch

    def _new_epoch(self) -> int:
        self._next_epoch += 1
        return self._next_epoch

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.epochs[tp.partition] = self._new_epoch()
            self._at_end.discard(tp.partition)
            self._first.pop(tp.partition, None)
            self._read.pop(tp.partition, None)
            self._ends.pop(tp.partition, None)
        self._topic_drained = False
        log.info(
            "partitions assigned",
            extra={"fields": {"partitions": sorted(tp.partition for tp in partitions), "owned": sorted(self.epochs)}},
        )

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = [tp.partition for tp in partitions]
        if self.listener is not None:
            self.listener.revoked(gone)
        self._forget(gone)
        log.info("partitions revoked", extra={"fields": {"partitions": sorted(gone), "owned": sorted(self.epochs)}})

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = [tp.partition for tp in partitions]
        self._forget(gone)
        if self.listener is not None:
            self.listener.lost(gone)
        log.warning(
            "partitions lost (this member was out of the group)", extra={"fields": {"partitions": sorted(gone)}}
        )

    def _forget(self, partitions: Sequence[int]) -> None:
        if self._on_forget is not None:
            self._on_forget(self._topic, list(partitions))
        for p in partitions:
            self.epochs.pop(p, None)
            self._at_end.discard(p)
            self._first.pop(p, None)
            self._read.pop(p, None)
            self._ends.pop(p, None)

    def close(self) -> None:
        """Leave the group (partitions are revoked: the listener commits first)."""
        self._consumer.close()
