"""The Bytewax input: every partition of the input topic, each read by a `PartitionReader`
whose position is the partition's recovery state (a restart resumes from the last
snapshot); all of a worker's partitions are read through one consumer. The start-up
checks run (and may exit) before the partitions are listed: Bytewax's own KafkaSource
asks for metadata without a timeout and can hang forever."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override

from flows.adapters.kafka.source import PartitionReader, WorkerConsumer
from flows.core.model import SourceRecord
from flows.settings import Settings
from flows.telemetry.metrics import Metrics

IDLE_WAIT = dt.timedelta(milliseconds=5)  # an idle partition is polled again after this


class _Partition(StatefulSourcePartition[SourceRecord, int]):
    def __init__(self, reader: PartitionReader) -> None:
        self._reader = reader
        self._awake: dt.datetime | None = None

    def next_batch(self) -> list[SourceRecord]:
        if self._reader.done:
            raise StopIteration
        batch = self._reader.next_batch()
        self._awake = None if batch else dt.datetime.now(dt.UTC) + IDLE_WAIT
        return batch

    def next_awake(self) -> dt.datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._reader.position

    def close(self) -> None:
        self._reader.close()


class KafkaInput(FixedPartitionedSource[SourceRecord, int]):
    """Every partition of INPUT_TOPIC; `partitions` runs the start-up checks first."""

    def __init__(
        self,
        settings: Settings,
        partitions: Callable[[], list[int]],
        stopping: threading.Event,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self._partitions = partitions
        self._stopping = stopping
        self._metrics = metrics
        self._local = threading.local()  # a worker builds and polls its parts on its own thread

    def _worker_consumer(self, topic: str) -> WorkerConsumer:
        """This worker's consumer, shared by its partitions (a new one once the last closed)."""
        shared: WorkerConsumer | None = getattr(self._local, "consumer", None)
        if shared is None or shared.closed:
            shared = WorkerConsumer(self.settings, topic)
            self._local.consumer = shared
        return shared

    @override
    def list_parts(self) -> list[str]:
        return [f"{p}-{self.settings.input_topic}" for p in self._partitions()]

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        idx, topic = for_part.split("-", 1)
        m = self._metrics
        reader = PartitionReader(
            self._worker_consumer(topic),
            topic,
            int(idx),
            resume_state,
            self._stopping,
            m.add_input if m is not None else None,
            m.set_high if m is not None else None,
        )
        return _Partition(reader)
