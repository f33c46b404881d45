"""The Bytewax input: every partition of the input topic, each read by a `PartitionReader`.
The start-up checks run (and may exit) before the partitions are listed: Bytewax's own
KafkaSource asks for metadata without a timeout and can hang forever.

A partition's recovery state (where a restart resumes) is the first offset the worker's
outputs have not yet made durable, not the reader's position: the worker's `Delivery`
awaits a batch's acknowledgements while the next batch is on its way, so at a snapshot the
last records read may be still in flight. Bytewax builds and runs a worker's sink and its input
partitions on the worker's thread (tests/unit/test_flow.py shows it), so the sink announces
its Delivery when it is built, and a partition finds it by its thread
(`WorkerOutputs`; not in a `threading.local`, which does not last on a Bytewax worker
thread: `flows.runtime.bytewax.threads`). When the input of a
worker is idle, or a partition ends, the Delivery is drained: what was read is delivered
and its offsets committed, and the final snapshot of a partition is its end.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override

from flows.adapters.kafka.committer import group_offsets
from flows.adapters.kafka.source import PartitionReader, WorkerConsumer
from flows.app.outputs import Delivery
from flows.core.model import SourceRecord
from flows.runtime.bytewax.threads import ByThread
from flows.settings import Settings
from flows.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
IDLE_WAIT = dt.timedelta(milliseconds=5)  # the reading partition, idle, is polled again after this
OTHER_WAIT = dt.timedelta(milliseconds=100)  # the worker's other partitions (they only watch their end)
IDLE_DRAIN_S = 0.01  # no partition of the worker read anything for this long: drain
END_WAIT_S = 60.0  # at its end, a partition waits this long at most for its records' delivery


class _Worker:
    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.last_read = time.monotonic()


class WorkerOutputs:
    """Each worker's Delivery, found from the worker's thread, and when the worker's input
    last gave records."""

    def __init__(self) -> None:
        self._workers: ByThread[_Worker] = ByThread()

    def register(self, delivery: Delivery) -> None:
        """The Delivery of the worker running on this thread."""
        worker = self._workers.get()
        if worker is None or worker.delivery is not delivery:
            self._workers.set(_Worker(delivery))

    def delivery(self) -> Delivery | None:
        """This worker's Delivery (None before its sink is built)."""
        worker = self._workers.get()
        return worker.delivery if worker is not None else None

    def read(self) -> None:
        """A partition of this worker gave records."""
        worker = self._workers.get()
        if worker is not None:
            worker.last_read = time.monotonic()

    def idle(self) -> None:
        """A partition of this worker gave nothing: if none did for a while, deliver what
        is in flight (so offsets are committed and a snapshot has it all)."""
        worker = self._workers.get()
        if worker is not None and worker.delivery.in_flight and time.monotonic() - worker.last_read >= IDLE_DRAIN_S:
            worker.delivery.drain()

    def finished(self, topic: str, partition: int) -> int | None:
        """The first offset of the partition this worker's outputs do not have durably yet
        (None: none of its records delivered since the start)."""
        delivery = self.delivery()
        if delivery is None or delivery.progress is None:
            return None
        return delivery.progress.finished(topic, partition)

    def moved_past(self, topic: str, partition: int, offset: int) -> None:
        """Everything read of the partition is delivered, and its position is at `offset`,
        past records the flow never gets: the offsets committed may move there too."""
        delivery = self.delivery()
        if delivery is not None and delivery.progress is not None:
            delivery.progress.moved_past(topic, partition, offset)


class _Partition(StatefulSourcePartition[SourceRecord, int]):
    def __init__(
        self,
        reader: PartitionReader,
        outputs: WorkerOutputs,
        topic: str,
        partition: int,
        adopt: Adoption | None = None,
    ) -> None:
        self._reader = reader
        self._outputs = outputs
        self._topic, self._partition = topic, partition
        self._start = reader.position  # durable before this run: the state until a delivery
        self._awake: dt.datetime | None = None
        self._end_since: float | None = None
        self._adopt = adopt
        self._adopted: dict[int, tuple[PartitionReader, int]] = {}  # added at run time: reader, start

    def next_batch(self) -> list[SourceRecord]:
        if self._adopt is not None:
            self._adopt_new()
        if self._reader.done and all(r.done for r, _ in self._adopted.values()):
            if self._settled():
                raise StopIteration
            self._awake = dt.datetime.now(dt.UTC) + IDLE_WAIT
            return []
        batch = self._reader.next_batch()
        if batch:
            self._outputs.read()
            self._awake = None
        elif self._reader.reads:
            self._outputs.idle()
            self._awake = dt.datetime.now(dt.UTC) + IDLE_WAIT
        else:
            self._awake = dt.datetime.now(dt.UTC) + OTHER_WAIT
        return batch

    def _adopt_new(self) -> None:
        """Partitions added to the input topic since the start: Bytewax's parts are fixed
        for a run, so partition q is read along with this part's when q % (partitions at
        the start) is this partition. Its progress is kept in the consumer group only
        (committed every OFFSET_COMMIT_INTERVAL_SECONDS): after a restart it has a part of
        its own, which resumes from the group's offset."""
        adopt = self._adopt
        assert adopt is not None
        count = self._reader.shared.partition_count()
        for q in range(adopt.initial, count or 0):
            if q % adopt.initial != self._partition or q in self._adopted:
                continue
            start = adopt.start(q)
            reader = PartitionReader(self._reader.shared, self._topic, q, start, adopt.stopping)
            self._adopted[q] = (reader, reader.position)
            log.info(
                "input partition added at run time: reading it",
                extra={"fields": {"topic": self._topic, "partition": q, "from": start, "with_part": self._partition}},
            )

    def _settled(self) -> bool:
        """At the end: every record read is delivered (the worker's Delivery drained), so
        the last snapshot is the partition's end; or waited long enough."""
        delivery = self._outputs.delivery()
        if delivery is not None:
            delivery.drain()
        durable = self._durable()
        settled = durable in (self._reader.position, self._reader.end_position)
        for q, (reader, start) in self._adopted.items():
            done = self._delivered(q, reader, start)
            settled = settled and done in (reader.position, reader.end_position)
        if settled:
            return True
        now = time.monotonic()
        if self._end_since is None:
            self._end_since = now
        if now - self._end_since < END_WAIT_S:
            return False
        log.warning(
            "input partition ended with records not yet delivered; they are read again after a restart",
            extra={"fields": {"topic": self._topic, "partition": self._partition, "from": self._durable()}},
        )
        return True

    def _durable(self) -> int:
        """Where a restart resumes: the first offset not yet delivered; or, when every record
        read is delivered and the partition is at its end, the consumer's position there
        (past transaction markers and aborted records: else the offsets, and the lag, would
        stay short of the end when the input was written by a transactional producer)."""
        return self._delivered(self._partition, self._reader, self._start)

    def _delivered(self, partition: int, reader: PartitionReader, start: int) -> int:
        """What of the partition is durable (delivered, or the snapshot's position when
        nothing was delivered since); at its end, that position goes to the consumer group
        too, even when this run read nothing (resumed at the end from a snapshot its killed
        predecessor took after its last group commit: else the lag would stay behind)."""
        finished = self._outputs.finished(self._topic, partition)
        durable = start if finished is None else finished
        end = reader.end_position
        if end is not None and end >= durable and durable >= reader.position:
            self._outputs.moved_past(self._topic, partition, end)
            return end
        return durable

    def next_awake(self) -> dt.datetime | None:
        return self._awake

    def snapshot(self) -> int:
        for q, (reader, start) in self._adopted.items():
            self._delivered(q, reader, start)  # drained ones commit their position
        return self._durable()

    def close(self) -> None:
        for reader, _ in self._adopted.values():
            reader.close()
        self._reader.close()


@dataclass(frozen=True)
class Adoption:
    """How a part takes on partitions added at run time: `initial` partitions were listed
    at the start; `start(q)` is where partition q is read from (None: its beginning)."""

    initial: int
    start: Callable[[int], int | None]
    stopping: threading.Event


class KafkaInput(FixedPartitionedSource[SourceRecord, int]):
    """Every partition of INPUT_TOPIC; `partitions` runs the start-up checks first."""

    def __init__(
        self,
        settings: Settings,
        partitions: Callable[[], list[int]],
        stopping: threading.Event,
        outputs: WorkerOutputs,
        metrics: Metrics | None = None,
        resume_from_group: bool = False,
    ) -> None:
        self.settings = settings
        self._partitions = partitions
        self._stopping = stopping
        self.outputs = outputs
        self._metrics = metrics
        self._resume_from_group = resume_from_group
        self._group: dict[int, int] | None = None
        self._group_lock = threading.Lock()
        self._consumers: ByThread[WorkerConsumer] = ByThread()  # a worker's parts are built on its thread

    def _worker_consumer(self, topic: str) -> WorkerConsumer:
        """This worker's consumer, shared by its partitions (a new one once the last closed)."""
        shared = self._consumers.get()
        if shared is None or shared.closed:
            m = self._metrics
            shared = WorkerConsumer(
                self.settings, topic, m.add_input if m is not None else None, m.set_high if m is not None else None
            )
            self._consumers.set(shared)
        return shared

    @override
    def list_parts(self) -> list[str]:
        return [f"{p}-{self.settings.input_topic}" for p in self._partitions()]

    def _group_start(self, partition: int) -> int | None:
        """Where the consumer group's committed offsets say partition `partition` resumes,
        for a partition without a snapshot of its own (asked once, for all of them)."""
        with self._group_lock:
            if self._group is None:
                self._group = group_offsets(self.settings, self.settings.input_topic, self._partitions())
            return self._group.get(partition)

    def _added_start(self, partition: int) -> int | None:
        found = group_offsets(self.settings, self.settings.input_topic, [partition])
        return found.get(partition)

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        """A part resumes from its snapshot; with recovery on, a part that has none (a
        partition added to the topic while the flow ran, or a recovery store started
        afresh) resumes from the consumer group's committed offset, else from the start."""
        idx, topic = for_part.split("-", 1)
        if resume_state is None and self._resume_from_group:
            resume_state = self._group_start(int(idx))
            if resume_state is not None:
                log.info(
                    "input partition without a snapshot: resuming from the consumer group's offset",
                    extra={"fields": {"topic": topic, "partition": int(idx), "from": resume_state}},
                )
        reader = PartitionReader(self._worker_consumer(topic), topic, int(idx), resume_state, self._stopping)
        adopt = Adoption(len(self._partitions()), self._added_start, self._stopping)
        return _Partition(reader, self.outputs, topic, int(idx), adopt)
