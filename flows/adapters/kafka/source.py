"""Reading one input partition: a consumer `assign()`ed to it at a position of our own.

Consumer errors that may pass (a broker restarting) are logged and ridden out; others
raise. Headers are read as bytes (`flows.adapters.kafka.headers`), so a header name that is
not UTF-8 can't stop the source. The Bytewax source (`flows.runtime.bytewax.source`) wraps
this and keeps the position in its recovery state.
"""

from __future__ import annotations

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


class PartitionReader:
    """Batches of records from one partition, from `resume` (None: the beginning) on."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        partition: int,
        resume: int | None,
        stopping: threading.Event | None = None,
        on_input: Callable[[int], None] | None = None,
        on_high: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self._consumer = Consumer(consumer_config(settings))
        self._topic, self._partition = topic, partition
        self.position = OFFSET_BEGINNING if resume is None else resume
        self._consumer.assign([TopicPartition(topic, partition, self.position)])
        self._batch_size = settings.source_batch_size
        self._where = f"{topic}:{partition}"
        self._stopping = stopping or threading.Event()
        self._on_input = on_input
        self._on_high = on_high
        self.at_end = False
        self._last_data = self._last_check = time.monotonic()

    @property
    def done(self) -> bool:
        """The partition is drained (with STOP_AT_END), or the process is stopping."""
        return self.at_end or self._stopping.is_set()

    def next_batch(self) -> list[SourceRecord]:
        """The records available now (maybe none); the position moves past them."""
        msgs: list[Any] = self._consumer.consume(self._batch_size, 0)  # Message types every field optional
        batch: list[SourceRecord] = []
        append = batch.append
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.at_end = True
                    break
                if error_kind(err) is not Kind.RETRIABLE:
                    raise KafkaException(err)
                log.warning(
                    "kafka consumer error, retrying", extra={"fields": {"where": self._where, "error": str(err)}}
                )
                continue
            append(source_record(msg))
        if batch:
            self.position = batch[-1].offset + 1
            self._last_data = time.monotonic()
            if self._on_input is not None:
                self._on_input(len(batch))
            if self._on_high is not None:
                tp = TopicPartition(self._topic, self._partition)
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
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
            low, high = self._consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
        except KafkaException:
            return  # the broker is away: librdkafka reconnects by itself
        waiting = high > self.position if self.position >= 0 else high > low
        if waiting:
            log.warning(
                "kafka partition stalled, assigning it again",
                extra={"fields": {"where": self._where, "position": self.position, "end_offset": high}},
            )
            self._consumer.unassign()
            self._consumer.assign([TopicPartition(self._topic, self._partition, self.position)])
            self._last_data = now

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()
