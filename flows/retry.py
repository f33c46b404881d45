"""Retrying a dependency that may come back: capped exponential backoff with full jitter,
until a deadline.

Each adapter says which of its client's errors are which (`Kind`): retriable (the
dependency is down or slow: wait and try again), record-level (this record can never be
written or looked up: the caller isolates it) or fatal (a bug or a misconfiguration:
raise). While a worker retries it takes no more input (backpressure). Past the deadline
the `give_up` hook hears of it (the dataflow exits for a restart; the Lambda lets the
error fail the invocation) and `DependencyUnavailable` is raised.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Protocol, TypeVar

from flows.errors import DependencyUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)


class Kind(StrEnum):
    """What an error from a dependency means for the flow."""

    RETRIABLE = "retriable"
    RECORD = "record"
    FATAL = "fatal"


Classify = Callable[[BaseException], Kind]
GiveUp = Callable[[BaseException], None]


class Observer(Protocol):
    """Told of every retry and of each dependency going down or coming back (the metrics)."""

    def retried(self, dependency: str) -> None:
        """A failed call will be tried again."""

    def dependency_up(self, dependency: str, up: bool) -> None:
        """The dependency answers (`up`), or failed in a way that may pass."""


def network_kind(exc: BaseException) -> Kind:
    """The classification every adapter starts from: the OS's network errors may pass."""
    return Kind.RETRIABLE if isinstance(exc, ConnectionError | TimeoutError) else Kind.FATAL


class Backoff:
    """Capped exponential backoff with full jitter; clock and sleep are injectable."""

    def __init__(
        self,
        deadline_s: float,
        base_s: float = 0.1,
        cap_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.deadline_s = deadline_s
        self.base_s = base_s
        self.cap_s = cap_s
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def delay(self, attempt: int) -> float:
        """How long to wait before attempt `attempt + 1`."""
        return self.rng.uniform(0, min(self.cap_s, self.base_s * (2**attempt)))


class Retries:
    """The process's retry policy: one deadline and one give-up hook for every dependency.

    A thread may register a hook that runs before its first wait of each failing call
    (`before_wait`): exactly-once mode commits or aborts the worker's open Kafka transaction
    there, so that no transaction stays open across an outage (it would outlive
    TRANSACTION_TIMEOUT_MS and fence the producer). The hook may raise to abandon the call."""

    def __init__(self, deadline_s: float, give_up: GiveUp | None = None, observer: Observer | None = None) -> None:
        self.deadline_s = deadline_s
        self.give_up = give_up
        self.observer = observer
        self._before_wait: dict[int, Callable[[], None]] = {}

    def before_wait(self, hook: Callable[[], None] | None) -> None:
        """Run `hook` on this thread before the first wait of every failing call made on it
        (None: no hook)."""
        if hook is None:
            self._before_wait.pop(threading.get_ident(), None)
        else:
            self._before_wait[threading.get_ident()] = hook

    def dependency_up(self, dependency: str, up: bool) -> None:
        """A dependency answered (`up`) or failed in a way that may pass; for the observer."""
        if self.observer is not None:
            self.observer.dependency_up(dependency, up)

    def gave_up(self, exc: BaseException) -> BaseException:
        """Tell the hook a dependency is gone for good; returns `exc` for the caller to raise."""
        if self.give_up is not None:
            self.give_up(exc)
        return exc

    def call(self, what: str, fn: Callable[[], T], classify: Classify, backoff: Backoff | None = None) -> T:
        """Call `fn` until it succeeds; retriable failures are retried until the deadline,
        any other is raised at once. The first word of `what` names the dependency
        (`postgresql`, `cassandra`, `kafka`) for the observer."""
        dependency = what.split(" ", 1)[0]
        backoff = backoff or Backoff(self.deadline_s)
        start = backoff.clock()
        attempt = 0
        while True:
            try:
                result = fn()
            except Exception as exc:
                if classify(exc) is not Kind.RETRIABLE:
                    raise
                self.dependency_up(dependency, False)
                waited = backoff.clock() - start
                if waited >= backoff.deadline_s:
                    raise self.gave_up(
                        DependencyUnavailable(
                            f"{what}: still failing after {waited:.0f}s (deadline {backoff.deadline_s:.0f}s): "
                            f"{type(exc).__name__}: {exc}"
                        )
                    ) from exc
                delay = min(backoff.delay(attempt), max(0.0, backoff.deadline_s - waited))
                log.warning(
                    "%s failed, retrying",
                    what,
                    extra={
                        "fields": {
                            "dependency": what,
                            "attempt": attempt + 1,
                            "retry_in_s": round(delay, 3),
                            "error": f"{type(exc).__name__}: {exc}"[:300],
                        }
                    },
                )
                if self.observer is not None:
                    self.observer.retried(dependency)
                if attempt == 0:
                    hook = self._before_wait.get(threading.get_ident())
                    if hook is not None:
                        hook()
                backoff.sleep(delay)
                attempt += 1
            else:
                if attempt:
                    self.dependency_up(dependency, True)
                    log.info("%s recovered", what, extra={"fields": {"dependency": what, "attempts": attempt + 1}})
                return result
