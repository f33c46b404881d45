"""The Bytewax output: one generic sink whose partition is a worker's `Delivery` (every
output of the flow, `flows.app.outputs`), built with the worker."""

from __future__ import annotations

from collections.abc import Callable

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from typing_extensions import override

from flows.app.outputs import Delivery
from flows.core.model import Outcome


class _Partition(StatelessSinkPartition[Outcome]):
    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery

    def write_batch(self, items: list[Outcome]) -> None:
        self.delivery.write(items)

    def close(self) -> None:
        self.delivery.close()


class DeliverySink(DynamicSink[Outcome]):
    """`build(worker_index)` makes a worker's Delivery."""

    def __init__(self, build: Callable[[int], Delivery]) -> None:
        self._build = build

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(self._build(worker_index))
