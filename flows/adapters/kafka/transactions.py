"""Exactly-once delivery: every message a worker produces goes out in a Kafka transaction
that also carries the input offsets it covers (`send_offsets_to_transaction` with the
group's metadata, KIP-447), so a `read_committed` consumer of the outputs sees each input
record exactly once, and the group's committed offsets are where processing resumes.

A transaction opens with the first batch after a commit and commits at least every
COMMIT_INTERVAL_MS (the source ticks it while the input is idle), when a partition is about
to move to another member, and at the end. Every output of a batch, history rows included,
is acknowledged before the batch counts for the transaction (the delivery loop flushes every
output first), so a commit never covers a record whose row is not written; a row written
for a transaction that then aborts is rewritten, the same, when the record is processed
again (rows are idempotent upserts).

A zombie (a member thrown out of the group that still runs) can't commit: its offsets
carry an old group generation and the broker refuses them; its transaction aborts and
nothing it produced becomes visible. When a transaction must abort, the partitions still
owned are read again from their committed offsets (under new epochs: what was read before
is dropped at the outputs). A fatal producer error (fenced by a newer instance of the same
transactional.id) ends the worker: it is a zombie.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from confluent_kafka import KafkaException, TopicPartition

from flows.adapters.kafka.group import GroupReader
from flows.adapters.kafka.writer import KafkaWriter
from flows.core.model import Outcome
from flows.errors import DeliveryFailed
from flows.retry import Retries
from flows.settings import Settings
from flows.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class Transactions:
    """A worker's transactions: admits a batch (dropping records of partitions it no longer
    owns), counts what is delivered, commits when due. Also the reader's rebalance listener."""

    def __init__(
        self,
        settings: Settings,
        writer: KafkaWriter,
        reader: GroupReader,
        retries: Retries,
        metrics: Metrics | None = None,
    ) -> None:
        self._topic = settings.input_topic
        self._interval_s = settings.commit_interval_ms / 1000
        self._timeout_s = settings.retry_deadline_seconds
        self._writer = writer
        self._producer = writer.producer
        self._reader = reader
        self._retries = retries
        self._metrics = metrics
        self._open = False
        self._opened_at = 0.0
        self._offsets: dict[int, int] = {}
        reader.listener = self
        self._call("init_transactions", lambda: self._producer.init_transactions(self._timeout_s))

    def admit(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """The outcomes of records this member still owns, in an open transaction."""
        current = self._reader.current
        kept = [r for r in outcomes if current(r.record.partition, r.record.epoch)]
        if len(kept) < len(outcomes):
            log.info(
                "records of partitions no longer owned dropped; their new owner reads them again",
                extra={"fields": {"dropped": len(outcomes) - len(kept)}},
            )
        if kept and not self._open:
            self._producer.begin_transaction()
            self._open, self._opened_at = True, time.monotonic()
        return kept

    def delivered(self, outcomes: Sequence[Outcome]) -> None:
        """Every output has these outcomes: their offsets go with the transaction."""
        offsets = self._offsets
        for r in outcomes:
            record = r.record
            if offsets.get(record.partition, -1) <= record.offset:
                offsets[record.partition] = record.offset + 1
        self.tick()

    def tick(self) -> None:
        """Commit if the interval has passed (the source calls this while the input is idle)."""
        if self._open and time.monotonic() - self._opened_at >= self._interval_s:
            self.commit()

    def commit(self) -> None:
        """Commit the open transaction with the offsets it covers."""
        if not self._open:
            return
        offsets = [TopicPartition(self._topic, p, o) for p, o in sorted(self._offsets.items())]
        try:
            if offsets:
                self._producer.send_offsets_to_transaction(offsets, self._reader.group_metadata(), self._timeout_s)
            self._call("commit_transaction", lambda: self._producer.commit_transaction(self._timeout_s))
        except KafkaException as exc:
            err = exc.args[0]
            if err.fatal():
                raise self._retries.gave_up(
                    DeliveryFailed(
                        f"this worker's producer was fenced (another instance took its transactional.id, or it was "
                        f"out of the group): {err}",
                        err.code(),
                    )
                ) from None
            if not err.txn_requires_abort():
                raise
            log.warning(
                "transaction refused, aborting it; its records are read again", extra={"fields": {"error": str(err)}}
            )
            self.abort()
            return
        self._open, self._offsets = False, {}
        if self._metrics is not None:
            for tp in offsets:
                self._metrics.set_committed(self._topic, tp.partition, tp.offset)

    def abort(self) -> None:
        """Abort the open transaction and read the partitions still owned again from their
        committed offsets."""
        if self._open:
            self._call("abort_transaction", lambda: self._producer.abort_transaction(self._timeout_s))
        self._open, self._offsets = False, {}
        owned = list(self._reader.epochs)
        if owned:
            committed = self._reader.committed(owned, self._timeout_s)
            self._reader.rewind({p: committed.get(p, 0) for p in owned})

    def revoked(self, partitions: Sequence[int]) -> None:
        """Partitions are moving to another member: commit what was done for them first."""
        self.commit()

    def lost(self, partitions: Sequence[int]) -> None:
        """This member was out of the group: its open transaction can't commit."""
        if self._open:
            self.abort()

    def close(self) -> None:
        """Commit what is open (the end of the input, or a graceful stop)."""
        self.commit()

    def _call(self, what: str, fn: object) -> None:
        """A transactional call, retried while Kafka says it may pass."""
        assert callable(fn)
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                fn()
                return
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or time.monotonic() > deadline:
                    raise
                log.warning("%s failed, retrying", what, extra={"fields": {"error": str(err)}})
                time.sleep(0.2)
