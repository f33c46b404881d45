"""At-least-once mode: the offsets the flow has finished with, committed to CONSUMER_GROUP
every OFFSET_COMMIT_INTERVAL_SECONDS (and at close), so the standard tools (kafka-consumer-groups, Kafka UI,
Burrow, KEDA) show the flow's lag. The recovery snapshots stay where processing resumes;
the group's offsets are for visibility (the flow never joins the group: its partitions are
Bytewax's, and a group with no active member takes commits from anyone)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaException, TopicPartition

from flows import connections
from flows.core.model import Outcome
from flows.settings import Settings
from flows.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 10.0  # at close, committing is tried again for this long at most


def group_offsets(settings: Settings, topic: str, partitions: Sequence[int]) -> dict[int, int]:
    """The offsets CONSUMER_GROUP has committed for these partitions of `topic` (those it has),
    read_uncommitted so an open transaction does not make the broker wait."""
    consumer = Consumer(
        {
            **connections.kafka_common(settings),
            "group.id": settings.consumer_group,
            "enable.auto.commit": False,
            "isolation.level": "read_uncommitted",
        }
    )
    try:
        found = consumer.committed(
            [TopicPartition(topic, p) for p in partitions], timeout=settings.startup_timeout_seconds
        )
        return {tp.partition: tp.offset for tp in found if tp.offset >= 0}
    finally:
        consumer.close()


class OffsetCommitter:
    """Commits the finished offsets of one worker's batches to the group, every interval,
    from a thread of its own (the worker never waits for the broker). A commit counts only
    once the broker accepted it, partition by partition; what it refused, or a commit that
    failed whole (the coordinator moving, the broker away), is committed again at the next
    interval, and at close (bounded)."""

    transactional = False

    def __init__(self, settings: Settings, client: str, metrics: Metrics | None = None) -> None:
        self._consumer = Consumer(
            {
                **connections.kafka_common(settings),
                "group.id": settings.consumer_group,
                "client.id": f"{client}-offsets",
                "enable.auto.commit": False,
            }
        )
        self._interval_s = settings.offset_commit_interval_seconds
        self._close_timeout_s = min(CLOSE_TIMEOUT_S, settings.retry_deadline_seconds)
        self._metrics = metrics
        self._lock = threading.Lock()
        self._commit_lock = threading.Lock()  # one commit at a time (the timer's, or close's)
        self._finished: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._closing = threading.Event()
        self._timer = threading.Thread(target=self._commits, name=f"{client}-offsets", daemon=True)
        self._timer.start()

    def admit(self, outcomes: Sequence[Outcome]) -> Sequence[Outcome]:
        """Everything is written in at-least-once mode."""
        return outcomes

    def begin(self) -> None:
        """No transaction in at-least-once mode."""

    def delivered(self, outcomes: Sequence[Outcome]) -> None:
        """Every output has these outcomes: their offsets are finished."""
        with self._lock:
            finished = self._finished
            for r in outcomes:
                key = (r.record.topic, r.record.partition)
                if finished.get(key, -1) <= r.record.offset:
                    finished[key] = r.record.offset + 1

    def failed(self, exc: BaseException) -> bool:
        """A failed write is the flow's: nothing to drop here."""
        return False

    def moved_past(self, topic: str, partition: int, offset: int) -> None:
        """The partition's position moved to `offset` past records the flow never gets
        (transaction markers, aborted records), with everything before delivered."""
        with self._lock:
            key = (topic, partition)
            if self._finished.get(key, -1) < offset:
                self._finished[key] = offset

    def finished(self, topic: str, partition: int) -> int | None:
        """The offset after the last delivered record of the partition (None: none yet)."""
        with self._lock:
            return self._finished.get((topic, partition))

    def tick(self) -> None:
        """The commits run on their own thread, every interval."""

    def pending(self) -> dict[tuple[str, int], int]:
        """Finished offsets the broker has not accepted yet."""
        with self._lock:
            return {k: o for k, o in self._finished.items() if self._committed.get(k) != o}

    def _commits(self) -> None:
        while not self._closing.wait(self._interval_s):
            self.commit()

    def commit(self) -> bool:
        """Commit what is finished and not yet accepted; True when nothing is left pending."""
        with self._commit_lock:
            pending = self.pending()
            if not pending:
                return True
            offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(pending.items())]
            try:
                results = self._consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:  # the whole commit failed: the next one tries again
                log.warning(
                    "committing offsets to the consumer group failed; trying again",
                    extra={"fields": {"error": str(exc)[:300]}},
                )
                return False
            accepted = [tp for tp in results or [] if tp.error is None and tp.offset >= 0]
            refused = [tp for tp in results or [] if tp.error is not None]
            with self._lock:
                for tp in accepted:
                    self._committed[(tp.topic, tp.partition)] = tp.offset
            if refused:
                log.warning(
                    "the consumer group refused some offsets; trying again",
                    extra={"fields": {"refused": [f"{tp.topic}:{tp.partition}: {tp.error}" for tp in refused][:10]}},
                )
            if self._metrics is not None:
                for tp in accepted:
                    self._metrics.set_committed(tp.topic, tp.partition, tp.offset)
            return not refused

    def close(self) -> None:
        """Commit what is finished, retrying for a while, and let the client go."""
        self._closing.set()
        self._timer.join(self._close_timeout_s)
        deadline = time.monotonic() + self._close_timeout_s
        while not self.commit() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = self.pending()
        if left:
            log.warning(
                "offsets not committed to the consumer group at close (the lag shown stays behind until the next "
                "run commits)",
                extra={"fields": {"partitions": [f"{t}:{p}" for t, p in sorted(left)][:20]}},
            )
        self._consumer.close()

    def abandon(self) -> None:
        """After a failed write: what was finished before it is still finished."""
        self.close()
