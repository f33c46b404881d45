"""The outputs of the flow, behind one small protocol, and the delivery of a batch to them.

An output is an entry `(name, select, writer factory)`: the outcomes it takes, and how a
worker builds the `Writer` that writes them. Delivering a batch hands every output the
outcomes it selects (`write`: a writer may start sending and return), then waits for each
in list order (`flush`: returns when everything handed over is durable). A writer whose
target refused some outcomes returns them from `flush` as new outcomes (an enriched
message the output topic refused comes back as a dead letter); those are delivered again,
to every output that selects them: their history rows are rewritten after the first, the
dead letters produced. The batch is done when nothing is left to re-route.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from flows.core.model import Outcome
from flows.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class Writer(Protocol):
    """Writes outcomes somewhere: `write` hands them over, `flush` makes them durable and
    returns what must be re-routed, `close` lets the writer's own resources go."""

    def write(self, items: Sequence[Outcome]) -> None:
        """Take these outcomes (sending may start now)."""

    def flush(self) -> Sequence[Outcome]:
        """Return when everything taken is durable, with the outcomes to re-route."""

    def close(self) -> None:
        """Let the writer's own resources go."""


class Progress(Protocol):
    """Where the flow's position in the input is kept: the group's offsets, committed in a
    transaction with the outputs (exactly-once) or after them (at-least-once)."""

    def admit(self, outcomes: Sequence[Outcome]) -> Sequence[Outcome]:
        """The outcomes to write (exactly-once drops those of partitions no longer owned)."""

    def delivered(self, outcomes: Sequence[Outcome]) -> None:
        """Every output has these outcomes."""

    def tick(self) -> None:
        """Time passes without a batch: commit if due."""

    def close(self) -> None:
        """Commit what is done."""


class Shared:
    """A worker's clients that several writers use (one Kafka producer for both Kafka
    outputs), built on first use, closed once, last built first."""

    def __init__(self) -> None:
        self._built: dict[str, Any] = {}
        self._closers: list[Callable[[], None]] = []

    def get(self, name: str, build: Callable[[], T], close: Callable[[T], None]) -> T:
        """The worker's `name` client, built by `build` the first time."""
        if name not in self._built:
            client = build()
            self._built[name] = client
            self._closers.append(lambda: close(client))
        return self._built[name]  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close every client, best effort."""
        closers, self._closers = self._closers, []
        for closer in reversed(closers):
            try:
                closer()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.exception("closing a client failed")
        self._built.clear()


def everything(_: Outcome) -> bool:
    """Selects every outcome."""
    return True


def enriched(r: Outcome) -> bool:
    """Selects enriched outcomes."""
    return r.ok


def failed(r: Outcome) -> bool:
    """Selects failed outcomes (dead letters)."""
    return not r.ok


@dataclass(frozen=True)
class Output:
    """One output of the flow: its name, which outcomes it takes, how a worker builds its writer."""

    name: str
    select: Callable[[Outcome], bool]
    writer: Callable[[Shared], Writer]


@dataclass
class Delivery:
    """A worker's writers, one per output, in the outputs' order."""

    writers: list[tuple[Output, Writer]]
    shared: Shared = field(default_factory=Shared)
    metrics: Metrics | None = None
    progress: Progress | None = None

    @classmethod
    def build(
        cls,
        outputs: Sequence[Output],
        metrics: Metrics | None = None,
        shared: Shared | None = None,
        progress: Callable[[Shared], Progress] | None = None,
    ) -> Delivery:
        """Build each output's writer for this worker, and its progress keeper."""
        shared = shared or Shared()
        try:
            writers = [(out, out.writer(shared)) for out in outputs]
            keeper = progress(shared) if progress is not None else None
        except BaseException:
            shared.close()
            raise
        return cls(writers, shared, metrics, keeper)

    def write(self, outcomes: Sequence[Outcome]) -> None:
        """Deliver a batch: returns when every output has it, re-routed outcomes included."""
        if self.progress is not None:
            outcomes = self.progress.admit(outcomes)
        pending: Sequence[Outcome] = outcomes
        while pending:
            for out, writer in self.writers:
                selected = [r for r in pending if out.select(r)]
                if selected:
                    writer.write(selected)
            rerouted: list[Outcome] = []
            for _, writer in self.writers:
                rerouted += writer.flush()
            pending = rerouted
        if self.metrics is not None:
            self.metrics.add_delivered(len(outcomes))
        if self.progress is not None:
            self.progress.delivered(outcomes)

    def close(self) -> None:
        """Commit what is done, close every writer, then the worker's shared clients."""
        if self.progress is not None:
            try:
                self.progress.close()
            except Exception:  # noqa: BLE001 - the rest must still close
                log.exception("committing the last progress failed")
        for _, writer in reversed(self.writers):
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.exception("closing an output failed")
        self.shared.close()
