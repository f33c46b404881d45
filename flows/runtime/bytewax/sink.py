"""The Bytewax output: one generic sink whose partition is a worker's `Delivery` (every
output of the flow, `flows.app.outputs`), built with the worker."""

from __future__ import annotations

from collections.abc import Callable

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from typing_extensions import override

from flows.app.outputs import Delivery
from flows.core.model import Outcome
from flows.telemetry.logs import bind_worker


class _Partition(StatelessSinkPartition[Outcome]):
    def __init__(
        self,
        delivery: Delivery,
        after_close: Callable[[], None] | None,
        on_build: Callable[[Delivery], None] | None,
        worker_index: int,
    ) -> None:
        self.delivery = delivery
        self._after_close = after_close
        self._worker_index: int | None = worker_index
        if on_build is not None:
            # Bytewax builds a worker's sink on the worker's thread: its input partitions find
            # the Delivery from the start (a run that reads nothing still commits positions)
            on_build(delivery)

    def write_batch(self, items: list[Outcome]) -> None:
        if self._worker_index is not None:  # the first batch: this is the worker's thread
            bind_worker(self._worker_index)
            self._worker_index = None
        self.delivery.write(items)

    def close(self) -> None:
        try:
            self.delivery.close()
        finally:
            if self._after_close is not None:
                self._after_close()


class DeliverySink(DynamicSink[Outcome]):
    """`build(worker_index)` makes a worker's Delivery; `after_close(worker_index)` runs once
    it is closed (exactly-once: the worker's consumer leaves the group then); `on_build`
    is told the Delivery when the worker builds it, on the worker's thread (at-least-once:
    the worker's input partitions find it there)."""

    def __init__(
        self,
        build: Callable[[int], Delivery],
        after_close: Callable[[int], None] | None = None,
        on_build: Callable[[Delivery], None] | None = None,
    ) -> None:
        self._build = build
        self._after_close = after_close
        self._on_build = on_build

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        after = self._after_close
        return _Partition(
            self._build(worker_index),
            (lambda: after(worker_index)) if after is not None else None,
            self._on_build,
            worker_index,
        )
