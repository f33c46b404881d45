"""At-least-once mode: the offsets the flow has finished with, committed to CONSUMER_GROUP
every OFFSET_COMMIT_INTERVAL_SECONDS, so the standard tools (kafka-consumer-groups, Kafka UI,
Burrow, KEDA) show the flow's lag. The recovery snapshots stay where processing resumes;
the group's offsets are for visibility (the flow never joins the group: its partitions are
Bytewax's, and a group with no active member takes commits from anyone)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaException, TopicPartition

from flows.core.model import Outcome
from flows.settings import Settings
from flows.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class OffsetCommitter:
    """Commits the finished offsets of one worker's batches, asynchronously, now and then:
    after a batch when the interval has passed, and from a timer while the input is idle
    (otherwise the last batch before a pause would stay uncommitted, its lag shown forever)."""

    def __init__(self, settings: Settings, client: str, metrics: Metrics | None = None) -> None:
        self._consumer = Consumer(
            {
                **settings.kafka_common(),
                "group.id": settings.consumer_group,
                "client.id": f"{client}-offsets",
                "enable.auto.commit": False,
            }
        )
        self._interval_s = settings.offset_commit_interval_seconds
        self._metrics = metrics
        self._lock = threading.Lock()
        self._finished: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._last = time.monotonic()
        self._closing = threading.Event()
        self._timer = threading.Thread(target=self._idle_commits, name=f"{client}-offsets", daemon=True)
        self._timer.start()

    def admit(self, outcomes: Sequence[Outcome]) -> Sequence[Outcome]:
        """Everything is written in at-least-once mode."""
        return outcomes

    def delivered(self, outcomes: Sequence[Outcome]) -> None:
        """Every output has these outcomes: their offsets are finished."""
        with self._lock:
            finished = self._finished
            for r in outcomes:
                key = (r.record.topic, r.record.partition)
                if finished.get(key, -1) <= r.record.offset:
                    finished[key] = r.record.offset + 1
        self.tick()

    def finished(self, topic: str, partition: int) -> int | None:
        """The offset after the last delivered record of the partition (None: none yet)."""
        with self._lock:
            return self._finished.get((topic, partition))

    def tick(self) -> None:
        """Commit if the interval has passed."""
        if time.monotonic() - self._last >= self._interval_s:
            self._commit(asynchronous=True)

    def _idle_commits(self) -> None:
        while not self._closing.wait(self._interval_s):
            self.tick()

    def _commit(self, asynchronous: bool) -> None:
        with self._lock:
            self._last = time.monotonic()
            pending = {k: o for k, o in self._finished.items() if self._committed.get(k) != o}
            if not pending:
                return
            offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(pending.items())]
            try:
                if asynchronous:
                    self._consumer.commit(offsets=offsets, asynchronous=True)
                else:
                    self._consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:  # visibility only: the next interval tries again
                log.warning("committing offsets to the consumer group failed", extra={"fields": {"error": str(exc)}})
                return
            self._committed.update(pending)
        if self._metrics is not None:
            for tp in offsets:
                self._metrics.set_committed(tp.topic, tp.partition, tp.offset)

    def close(self) -> None:
        """Commit what is finished, synchronously, and let the client go."""
        self._closing.set()
        self._timer.join(5)
        self._commit(asynchronous=False)
        self._consumer.close()
