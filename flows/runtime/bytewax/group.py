"""Exactly-once mode in Bytewax: each worker is a member of CONSUMER_GROUP (a Bytewax
`DynamicSource`: Kafka, not Bytewax, assigns the partitions, and there is no recovery
state: the group's committed offsets are where a worker resumes).

A worker's source and its output step share its `GroupReader` (the output's transactions
need the reader's group metadata and its assignment; the source ticks the transactions
while the input is idle). Both run on the worker's thread. The consumer leaves the group
when the output step closes, after its last commit: were it to leave when the input ends,
the records still on their way to the outputs would belong to nobody.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

from bytewax.inputs import DynamicSource, StatelessSourcePartition
from typing_extensions import override

from flows.adapters.kafka.group import GroupReader
from flows.adapters.kafka.transactions import Transactions
from flows.app.outputs import Delivery
from flows.core.model import SourceRecord

IDLE_WAIT = dt.timedelta(milliseconds=5)


class Worker:
    """What a worker's source and output step share."""

    def __init__(self, reader: GroupReader) -> None:
        self.reader = reader
        self.delivery: Delivery | None = None

    def tick(self) -> None:
        """The input is idle: let the transactions commit if due."""
        if self.delivery is not None and self.delivery.progress is not None:
            self.delivery.progress.tick()

    def settle(self) -> bool:
        """The input is drained: commit what this worker delivered now; whether all it read
        is committed (else records are still on their way to the outputs)."""
        progress = self.delivery.progress if self.delivery is not None else None
        return not isinstance(progress, Transactions) or progress.settle()


class Workers:
    """The workers of this process, by index, built by whichever side asks first."""

    def __init__(self, reader: Callable[[int], GroupReader]) -> None:
        self._reader = reader
        self._workers: dict[int, Worker] = {}
        self._lock = threading.Lock()

    def get(self, index: int) -> Worker:
        """Worker `index`'s shared parts."""
        with self._lock:
            if index not in self._workers:
                self._workers[index] = Worker(self._reader(index))
            return self._workers[index]


class _Partition(StatelessSourcePartition[SourceRecord]):
    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._awake: dt.datetime | None = None

    def next_batch(self) -> list[SourceRecord]:
        reader = self._worker.reader
        if reader.done:
            # the whole input is drained, but the others may wait for this worker's offsets:
            # end only once all it read is committed
            if self._worker.settle():
                raise StopIteration
            self._awake = dt.datetime.now(dt.UTC) + IDLE_WAIT
            return []
        batch = reader.next_batch()
        if batch:
            self._awake = None
        else:
            if reader.drained:
                self._worker.settle()  # STOP_AT_END: commit now, another member may be waiting for it
            else:
                self._worker.tick()
            self._awake = dt.datetime.now(dt.UTC) + IDLE_WAIT
        return batch

    def next_awake(self) -> dt.datetime | None:
        return self._awake

    def close(self) -> None:
        """The consumer stays in the group until the output step's last commit."""


class GroupInput(DynamicSource[SourceRecord]):
    """The input of exactly-once mode: a group member per worker."""

    def __init__(self, workers: Workers, check: Callable[[], object]) -> None:
        self._workers = workers
        self._check = check

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        self._check()  # the start-up checks, once per process
        return _Partition(self._workers.get(worker_index))
