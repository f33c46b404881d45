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

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from flows.adapters.kafka.group import GroupReader
from flows.adapters.kafka.writer import KafkaWriter
from flows.core.model import Outcome
from flows.errors import DeliveryFailed, DependencyUnavailable, RecordsRefused, RoundAborted
from flows.pause import PauseWatch
from flows.retry import Kind, Retries
from flows.settings import Settings
from flows.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


# A transactional call is given this timeout; Kafka refusing or timing out aborts the
# transaction (what it covers is read again) so the consumer gets to serve its rebalance.
CALL_TIMEOUT_S = 10.0
# librdkafka can ignore the timeout: `send_offsets_to_transaction` waits forever on a group
# coordinator it has cached from before a broker restart (confluentinc/librdkafka#5456,
# #5511). A call that has not returned this long after its own timeout is abandoned with its
# producer: a new producer takes the transactional.id over (fencing the stuck one and
# aborting its transaction).
STUCK_GRACE_S = 5.0


class Stuck(Exception):
    """A producer call did not return in time."""


def bounded(what: str, fn: Callable[[], object], timeout_s: float) -> None:
    """Run `fn` on a daemon thread; raise `Stuck` if it has not returned in `timeout_s`
    (the thread is left behind: a stuck librdkafka call can't be cancelled)."""
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name=f"kafka-{what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise Stuck(what)
    if failure:
        raise failure[0]


class Transactions:
    """A worker's transactions: admits a batch (dropping records of partitions it no longer
    owns), counts what is delivered, commits when due. Also the reader's rebalance listener.

    No transaction stays open while the worker waits for a dependency to come back: before
    the first wait of a failing call on the worker's thread (`Retries.before_wait`) the open
    transaction commits, or, when a round is half written into it, aborts and the round is
    dropped (`RoundAborted`: its records are read again). A transaction open across an
    outage would outlive TRANSACTION_TIMEOUT_MS, and the broker would fence the producer."""

    transactional = True

    def __init__(
        self,
        settings: Settings,
        writer: KafkaWriter,
        reader: GroupReader,
        retries: Retries,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        pauses: PauseWatch | None = None,
    ) -> None:
        self._topic = settings.input_topic
        self._interval_s = settings.commit_interval_ms / 1000
        self._deadline_s = settings.retry_deadline_seconds
        self._call_timeout_s = min(CALL_TIMEOUT_S, settings.retry_deadline_seconds)
        self._writer = writer
        self._reader = reader
        self._retries = retries
        self._metrics = metrics
        self._clock = clock
        self._pauses = pauses
        self._seen = pauses.now() if pauses is not None else 0.0
        self._open = False
        self._in_round = False  # a round is being written into the open transaction
        self._in_call = False  # a transactional call is under way (its own retries)
        self._opened_at = 0.0
        self._failing_since: float | None = None  # rounds dropped for Kafka failing, since
        self._offsets: dict[int, int] = {}  # what the open transaction covers
        self._committed: dict[int, int] = {}  # what this member committed, per owned partition
        reader.listener = self
        retries.before_wait(self._before_wait)
        self._call("init_transactions", self._writer.producer.init_transactions)

    def admit(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """The outcomes of records this member still owns under their current epoch; none
        after the process was paused (it may be a zombie now: its partitions another
        member's, so nothing it read before may be written, not even a history row)."""
        if self._pauses is not None:
            paused = self._pauses.paused_since(self._seen)
            self._seen = self._pauses.now()
            if paused is not None:
                log.warning(
                    "this process was paused; it may no longer own its partitions: what it read before is dropped, "
                    "its open transaction aborted, and its partitions read again from the committed offsets",
                    extra={"fields": {"paused_s": round(paused, 1), "dropped": len(outcomes)}},
                )
                self.abort()
                return []
        current = self._reader.current
        kept = [r for r in outcomes if current(r.record.partition, r.record.epoch)]
        if len(kept) < len(outcomes):
            log.info(
                "records of partitions no longer owned, or read again, dropped",
                extra={"fields": {"dropped": len(outcomes) - len(kept)}},
            )
        return kept

    def begin(self) -> None:
        """The round's messages are about to be produced: open a transaction if none is."""
        if not self._open:
            self._call("begin_transaction", lambda _: self._writer.producer.begin_transaction())
            self._open, self._opened_at = True, self._clock()
        self._in_round = True

    def delivered(self, outcomes: Sequence[Outcome]) -> None:
        """Every output has these outcomes: their offsets go with the transaction."""
        offsets = self._offsets
        for r in outcomes:
            record = r.record
            if offsets.get(record.partition, -1) <= record.offset:
                offsets[record.partition] = record.offset + 1
        self._in_round = False
        self._failing_since = None
        self.tick()

    def failed(self, exc: BaseException) -> bool:
        """A round failed to reach Kafka for a reason that may pass (the broker away past
        the messages' timeout, which is bounded by the transaction's): abort, read again,
        and go on until RETRY_DEADLINE_SECONDS, as at-least-once rides out an outage. Or a
        topic refused messages in the transaction: abort and read the round again; the
        writer remembers them, and the outputs route them another way this time."""
        if isinstance(exc, RecordsRefused):
            log.warning(
                "a topic refused messages inside the transaction; aborting it, the records are read again and the "
                "refused messages routed another way",
                extra={"fields": {"error": str(exc)[:300]}},
            )
            self.abort()
            if exc.sizes:
                self._writer.learn_limits()
            self._fresh_producer()
            return True
        if not (isinstance(exc, DeliveryFailed) and exc.retriable):
            return False
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failing_since >= self._deadline_s:
            raise self._retries.gave_up(
                DependencyUnavailable(
                    f"kafka: deliveries still failing after {now - self._failing_since:.0f}s "
                    f"(deadline {self._deadline_s:.0f}s): {exc}"
                )
            ) from exc
        log.warning(
            "kafka did not take the round; aborting its transaction, the records are read again",
            extra={"fields": {"error": str(exc)[:300]}},
        )
        self._retries.dependency_up("kafka", False)
        self.abort()
        return True

    def finished(self, topic: str, partition: int) -> int | None:
        """The offset after the last delivered record of the partition (None: none yet)."""
        return self._offsets.get(partition) if topic == self._topic else None

    def moved_past(self, topic: str, partition: int, offset: int) -> None:
        """The reader knows its partitions' positions itself (`GroupReader.skippable`)."""

    def tick(self) -> None:
        """Commit if the interval has passed (the source calls this while the input is
        idle); with nothing open, commit the positions of drained partitions that moved
        past what the flow never gets (transaction markers, aborted records)."""
        if self._open:
            if self._clock() - self._opened_at >= self._interval_s:
                self.commit()
        elif self._skips():
            self._call("begin_transaction", lambda _: self._writer.producer.begin_transaction())
            self._open, self._opened_at = True, self._clock()
            self.commit()

    def _skips(self) -> dict[int, int]:
        """Owned partitions read to their end whose consumer position is past the offset
        this member committed or covers: the offsets to commit there."""
        out: dict[int, int] = {}
        for partition in self._reader.epochs:
            done = self._offsets.get(partition, self._committed.get(partition))
            end = self._reader.skippable(partition, done)
            if end is not None:
                out[partition] = end
        return out

    def commit(self) -> None:
        """Commit the open transaction with the offsets it covers (and the positions of
        drained partitions). When Kafka refuses (the group moved on, a coordinator is gone,
        the transaction timed out), abort it: what it covers is read again."""
        if not self._open:
            return
        covered = {**self._offsets, **self._skips()}
        offsets = [TopicPartition(self._topic, p, o) for p, o in sorted(covered.items())]
        try:
            if offsets:
                metadata, producer, timeout = self._reader.group_metadata(), self._writer.producer, self._call_timeout_s
                bounded(
                    "send_offsets_to_transaction",
                    lambda: producer.send_offsets_to_transaction(offsets, metadata, timeout),
                    timeout + STUCK_GRACE_S,
                )
            self._call("commit_transaction", self._writer.producer.commit_transaction)
        except Stuck as stuck:
            log.warning(
                "the producer is stuck in a transactional call; replacing it, which aborts the open transaction: "
                "the records it covers are read again",
                extra={"fields": {"call": str(stuck)}},
            )
            self._replace_producer(may_have_committed=str(stuck) == "commit_transaction")
            return
        except KafkaException as exc:
            err = exc.args[0]
            if err.fatal():
                self._fatal(err, may_have_committed=True)
                return
            log.warning(
                "transaction not committed, aborting it; the records it covers are read again",
                extra={"fields": {"error": str(err)}},
            )
            self.abort()
            return
        self._open, self._offsets = False, {}
        for tp in offsets:
            self._committed[tp.partition] = tp.offset
            if self._metrics is not None:
                self._metrics.set_committed(self._topic, tp.partition, tp.offset)

    def abort(self) -> None:
        """Abort the open transaction and read the partitions still owned again from where
        this member last committed (or from the first record of their assignment)."""
        if self._open:
            try:
                self._call("abort_transaction", self._writer.producer.abort_transaction)
            except KafkaException as exc:
                if not exc.args[0].fatal():
                    raise
                self._fatal(exc.args[0], may_have_committed=False)
                return
        self._open, self._in_round, self._offsets = False, False, {}
        self._reader.rewind(self._committed)

    def _fatal(self, err: KafkaError, may_have_committed: bool) -> None:
        """A fatal producer error: fenced by another instance of the transactional.id, this
        worker is a zombie and gives up (exit 3); any other (the transaction's state lost
        across a broker restart: INVALID_TXN_STATE) only breaks this producer: a new one
        takes the transactional.id over and the records are read again."""
        if err.code() in FENCED:
            raise self._retries.gave_up(
                DeliveryFailed(
                    f"this worker's producer was fenced (another process took its transactional.id): {err}",
                    err.code(),
                )
            )
        log.warning(
            "the producer hit a fatal error; replacing it, which aborts the open transaction: the records it "
            "covers are read again",
            extra={"fields": {"error": str(err)[:300]}},
        )
        self._replace_producer(may_have_committed)

    def _replace_producer(self, may_have_committed: bool) -> None:
        """A new producer for the transactional.id (fencing the old one and aborting its open
        transaction), then the owned partitions read again from what the group committed."""
        self._writer.renew()
        self._open, self._in_round, self._offsets = False, False, {}
        self._call("init_transactions", self._writer.producer.init_transactions)
        if may_have_committed:  # the commit's outcome is unknown: ask the group
            self._committed = self._reader.committed(self._deadline_s)
        self._reader.rewind(self._committed)

    def revoked(self, partitions: Sequence[int]) -> None:
        """Partitions are moving to another member: commit what was done for them first."""
        self.commit()
        self._forget(partitions)

    def lost(self, partitions: Sequence[int]) -> None:
        """This member was out of the group: its open transaction can't commit."""
        self._forget(partitions)
        if self._open:
            self.abort()

    def close(self) -> None:
        """Commit what is open (the end of the input, or a graceful stop)."""
        self._retries.before_wait(None)
        self.commit()

    def abandon(self) -> None:
        """Close after a failed write: abort the open transaction (best effort, one try),
        so nothing of it becomes visible; its records are read again after the restart."""
        self._retries.before_wait(None)
        if self._open:
            try:
                self._writer.producer.abort_transaction(self._call_timeout_s)
            except Exception as exc:  # noqa: BLE001 - the broker aborts it at TRANSACTION_TIMEOUT_MS anyway
                log.warning(
                    "aborting the open transaction after a failed write did not complete; the broker aborts it "
                    "within TRANSACTION_TIMEOUT_MS",
                    extra={"fields": {"error": f"{type(exc).__name__}: {exc}"[:300]}},
                )
        self._open, self._in_round, self._offsets = False, False, {}

    def _fresh_producer(self) -> None:
        """A new producer for the transactional.id (after a refusal librdkafka's idempotence
        state can make the next transaction fail with skipped sequence numbers)."""
        self._writer.renew()
        self._call("init_transactions", self._writer.producer.init_transactions)

    def _before_wait(self) -> None:
        """This worker is about to wait for a dependency: close the open transaction first
        (commit it; or abort it, dropping the round half written into it)."""
        if self._in_call or not self._open:
            return
        if self._in_round:
            log.warning("a dependency failed while a round was in its transaction: aborting it, read again")
            self.abort()
            raise RoundAborted("the round's transaction was aborted to wait for a dependency")
        self.commit()

    def _forget(self, partitions: Sequence[int]) -> None:
        for p in partitions:
            self._committed.pop(p, None)

    def _call(self, what: str, fn: Callable[[float], object]) -> None:
        """A transactional call (given its timeout), retried while Kafka says it may pass,
        until RETRY_DEADLINE_SECONDS; then the worker gives up (exit 3: a restart resumes
        from the committed offsets)."""
        timeout = self._call_timeout_s
        call = functools.partial(fn, timeout)
        self._in_call = True
        try:
            self._retries.call(f"kafka {what}", lambda: bounded(what, call, timeout + STUCK_GRACE_S), _retriable)
        finally:
            self._in_call = False


# fatal errors that mean another producer took this transactional.id over (this one is a zombie)
FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})


def _retriable(exc: BaseException) -> Kind:
    """A transactional call may be called again when Kafka marks its error retriable
    (librdkafka's rule for these calls; an abortable or fatal error is not)."""
    if isinstance(exc, KafkaException) and exc.args and exc.args[0].retriable() and not exc.args[0].fatal():
        return Kind.RETRIABLE
    return Kind.FATAL
