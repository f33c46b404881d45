"""The outputs of the flow, behind one small protocol, and the delivery of batches to them.

An output is an entry `(name, select, writer factory)`: the outcomes it takes, and how a
worker builds the `Writer` that writes them. Delivering a batch is a *round*: every output
is handed the outcomes of the batch it selects (`write`, maybe none: a writer may start
sending and return), and later each is waited for in list order (`flush`: returns when its
oldest round not yet flushed is durable). Rounds are flushed in the order they started.
With a `depth` of 1 the delivery of batch N is awaited while batch N+1 is handed over (its
acknowledgements travel while the next batch is decoded and enriched); `progress` learns a
batch is delivered only once every output has it durably, and `drain` awaits all.

A writer whose target refused some outcomes returns them from `flush` as new outcomes (an
enriched message the output topic refused comes back as a dead letter); the rounds still in
flight are flushed, then those outcomes are delivered again, alone, to every output that
selects them: their history rows are rewritten after the first, the dead letters produced.
A round is done when nothing is left to re-route.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from flows.core.model import Outcome
from flows.errors import RoundAborted
from flows.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class Writer(Protocol):
    """Writes outcomes somewhere, in rounds: `write` hands a round over (maybe empty),
    `flush` makes the oldest round not yet flushed durable and returns what of it must be
    re-routed, `close` lets the writer's own resources go."""

    def write(self, items: Sequence[Outcome]) -> None:
        """Take this round's outcomes (sending may start now)."""

    def flush(self) -> Sequence[Outcome]:
        """Return when the oldest round taken is durable, with its outcomes to re-route."""

    def discard(self) -> None:
        """Forget the rounds taken and not flushed (their delivery failed or was dropped)."""

    def close(self) -> None:
        """Let the writer's own resources go."""


class Progress(Protocol):
    """Where the flow's position in the input is kept: the group's offsets, committed in a
    transaction with the outputs (exactly-once) or after them (at-least-once)."""

    @property
    def transactional(self) -> bool:
        """The Kafka outputs write inside a transaction that `begin` opens (exactly-once)."""

    def admit(self, outcomes: Sequence[Outcome]) -> Sequence[Outcome]:
        """The outcomes to write (exactly-once drops those of partitions no longer owned)."""

    def begin(self) -> None:
        """The round's transactional outputs are about to write (exactly-once: a transaction
        is open from here)."""

    def delivered(self, outcomes: Sequence[Outcome]) -> None:
        """Every output has these outcomes."""

    def failed(self, exc: BaseException) -> bool:
        """Writing the round failed with `exc`: True when the keeper dropped the round (its
        records are read again), False when the failure is the flow's."""

    def tick(self) -> None:
        """Time passes without a batch: commit if due."""

    def finished(self, topic: str, partition: int) -> int | None:
        """The offset after the last delivered record of the partition (None: none yet)."""

    def moved_past(self, topic: str, partition: int, offset: int) -> None:
        """Everything read of the partition is delivered and its position moved to `offset`,
        past records the flow never gets (transaction markers, aborted records)."""

    def close(self) -> None:
        """Commit what is done."""

    def abandon(self) -> None:
        """Close after a failed write: commit only what was committable before it
        (exactly-once: abort the open transaction)."""


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

    def close(self, abandon: bool = False) -> None:
        """Close every client, best effort; `abandon`: what a client still holds is dropped,
        not delivered (its `abandon`, when it has one, runs first)."""
        if abandon:
            for client in self._built.values():
                drop = getattr(client, "abandon", None)
                if drop is not None:
                    try:
                        drop()
                    except Exception:  # noqa: BLE001 - closing is best effort
                        log.exception("dropping what a client held failed")
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
    """One output of the flow: its name, which outcomes it takes, how a worker builds its
    writer; `transactional`: it writes inside the progress keeper's transaction (Kafka)."""

    name: str
    select: Callable[[Outcome], bool]
    writer: Callable[[Shared], Writer]
    transactional: bool = False


@dataclass
class Delivery:
    """A worker's writers, one per output, in the outputs' order; `depth` rounds may await
    their acknowledgements while the next batch is handed over (0: each batch is durable
    when `write` returns)."""

    writers: list[tuple[Output, Writer]]
    shared: Shared = field(default_factory=Shared)
    metrics: Metrics | None = None
    progress: Progress | None = None
    depth: int = 0
    broken: bool = field(default=False, init=False)
    _rounds: deque[Sequence[Outcome]] = field(default_factory=deque, init=False, repr=False)

    @classmethod
    def build(
        cls,
        outputs: Sequence[Output],
        metrics: Metrics | None = None,
        shared: Shared | None = None,
        progress: Callable[[Shared], Progress] | None = None,
        depth: int = 0,
    ) -> Delivery:
        """Build each output's writer for this worker, and its progress keeper."""
        shared = shared or Shared()
        try:
            writers = [(out, out.writer(shared)) for out in outputs]
            keeper = progress(shared) if progress is not None else None
        except BaseException:
            shared.close()
            raise
        return cls(writers, shared, metrics, keeper, depth)

    @property
    def in_flight(self) -> int:
        """Rounds handed over and not yet durable."""
        return len(self._rounds)

    def write(self, outcomes: Sequence[Outcome]) -> None:
        """Deliver a batch: hand it to every output, then wait until at most `depth` rounds
        are in flight (with a depth of 0, returns when every output has it durably).

        With a transactional keeper (exactly-once) a round is staged: the outputs outside
        the transaction (history) first, durably, then the transaction opens for the Kafka
        outputs; so no transaction is open while a dependency outside it is retried. A
        round the keeper drops (its transaction aborted) is not an error: its records are
        read again. Any other failure marks the delivery broken: closing it then commits
        nothing more."""
        progress = self.progress
        try:
            if progress is not None:
                outcomes = progress.admit(outcomes)
            if not outcomes:
                if progress is not None:
                    progress.tick()
            elif progress is not None and progress.transactional:
                self._staged(outcomes, progress)
            else:
                self._start(outcomes)
                self._rounds.append(outcomes)
            self._complete(self.depth)
        except RoundAborted:
            self._discard()
        except BaseException as exc:
            self._discard()
            if progress is not None and progress.failed(exc):
                return
            self.broken = True
            raise

    def drain(self) -> None:
        """Wait until every round handed over is durable (and its progress kept)."""
        self._complete(0)

    def _discard(self) -> None:
        """Forget every round in flight, in every writer."""
        self._rounds.clear()
        for _, writer in self.writers:
            writer.discard()

    def _staged(self, outcomes: Sequence[Outcome], progress: Progress) -> None:
        """One round, the outputs outside the transaction first, then the transaction's."""
        outside = [w for w in self.writers if not w[0].transactional]
        inside = [w for w in self.writers if w[0].transactional]
        rerouted = self._deliver(outside, outcomes)
        progress.begin()
        rerouted += self._deliver(inside, outcomes)
        while rerouted:
            rerouted = self._deliver(self.writers, rerouted)
        if self.metrics is not None:
            self.metrics.add_delivered(len(outcomes))
        progress.delivered(outcomes)

    def _deliver(self, writers: Sequence[tuple[Output, Writer]], outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Write `outcomes` to `writers` and wait for them; what they re-route."""
        self._start(outcomes, writers)
        return self._flush(writers)

    def _start(self, outcomes: Sequence[Outcome], writers: Sequence[tuple[Output, Writer]] | None = None) -> None:
        for out, writer in self.writers if writers is None else writers:
            writer.write([r for r in outcomes if out.select(r)])

    def _flush(self, writers: Sequence[tuple[Output, Writer]] | None = None) -> list[Outcome]:
        rerouted: list[Outcome] = []
        for _, writer in self.writers if writers is None else writers:
            rerouted += writer.flush()
        return rerouted

    def _complete(self, depth: int) -> None:
        rounds = self._rounds
        while len(rounds) > depth:
            finished = [rounds[0]]
            rerouted = self._flush()
            rounds.popleft()
            if rerouted:  # the rounds after it first, so the re-routed go out alone
                while rounds:
                    finished.append(rounds[0])
                    rerouted += self._flush()
                    rounds.popleft()
                while rerouted:
                    self._start(rerouted)
                    rerouted = self._flush()
            for outcomes in finished:
                if self.metrics is not None:
                    self.metrics.add_delivered(len(outcomes))
                if self.progress is not None:
                    self.progress.delivered(outcomes)

    def close(self) -> None:
        """Wait for the rounds in flight, commit what is done, close every writer, then the
        worker's shared clients. After a failed write (Bytewax closes the output step as it
        unwinds) nothing is drained and nothing more is committed: exactly-once aborts the
        open transaction, whose records are read again after the restart."""
        if self.broken:
            self._discard()
        else:
            try:
                self.drain()
            except Exception:  # noqa: BLE001 - the rest must still close; unacknowledged is not committed
                log.exception("delivering the last batches failed")
                self._discard()
                self.broken = True
        if self.progress is not None:
            try:
                if self.broken:
                    self.progress.abandon()
                else:
                    self.progress.close()
            except Exception:  # noqa: BLE001 - the rest must still close
                log.exception("committing the last progress failed")
        for _, writer in reversed(self.writers):
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.exception("closing an output failed")
        self.shared.close(abandon=self.broken)
