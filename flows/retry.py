"""The one place that tells retriable failures (a dependency is down or slow, it may pass)
from the rest, and retries them with capped exponential backoff and jitter.

Poison records never get here: bad input and unknown customers are values (`Failure`),
routed to the failure topic at once. What reaches `retry` is an exception from a client
library; if it may pass, the caller's worker blocks and retries (backpressure: the source
is not polled meanwhile), and after the deadline `DependencyUnavailable` is raised so the
process exits non-zero and an orchestrator restarts it from its last snapshot.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class DependencyUnavailable(RuntimeError):
    """A dependency stayed unavailable past the retry deadline."""


_give_up: Callable[[BaseException], None] | None = None


def set_give_up(hook: Callable[[BaseException], None] | None) -> None:
    """What to do when a dependency stays down past the deadline, before the exception is
    raised: the dataflow exits the process (see flows.lifecycle); the Lambda lets it raise."""
    global _give_up
    _give_up = hook


def gave_up(exc: BaseException) -> BaseException:
    if _give_up is not None:
        _give_up(exc)
    return exc


def is_retriable(exc: BaseException) -> bool:
    """True when the failure may pass by itself: connection refused or lost, timeout,
    unavailable, overloaded. Everything else is a bug or a misconfiguration."""
    # imported here so the pure modules that import this one stay free of drivers
    import psycopg
    import psycopg_pool
    from cassandra import (
        CoordinationFailure,
        OperationTimedOut,
        ReadTimeout,
        Unavailable,
        WriteTimeout,
    )
    from cassandra.cluster import NoHostAvailable
    from confluent_kafka import KafkaError, KafkaException

    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg.OperationalError):
        return True
    if isinstance(exc, psycopg.errors.AdminShutdown | psycopg.errors.CannotConnectNow):
        return True
    if isinstance(exc, NoHostAvailable | OperationTimedOut | Unavailable | ReadTimeout | WriteTimeout):
        return True
    if isinstance(exc, CoordinationFailure):  # includes overloaded write/read failures
        return True
    if type(exc).__name__ in {"OverloadedErrorMessage", "IsBootstrappingErrorMessage", "ConnectionException",
                              "ConnectionShutdown", "ConnectionBusy"}:
        return True
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        err: KafkaError = exc.args[0]
        return bool(err.retriable()) or err.code() in (
            KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
            KafkaError._MSG_TIMED_OUT, KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS,
            KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION,
        )
    return isinstance(exc, ConnectionError | TimeoutError)


class Backoff:
    """Capped exponential backoff with full jitter; clock and sleep are injectable."""

    def __init__(self, deadline_s: float, base_s: float = 0.1, cap_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.deadline_s = deadline_s
        self.base_s = base_s
        self.cap_s = cap_s
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0, min(self.cap_s, self.base_s * (2 ** attempt)))


def retry(what: str, fn: Callable[[], T], backoff: Backoff,
          retriable: Callable[[BaseException], bool] = is_retriable) -> T:
    """Call `fn` until it succeeds; retriable failures are retried until the deadline."""
    start = backoff.clock()
    attempt = 0
    while True:
        try:
            result = fn()
        except Exception as exc:
            if not retriable(exc):
                raise
            waited = backoff.clock() - start
            if waited >= backoff.deadline_s:
                raise gave_up(DependencyUnavailable(
                    f"{what}: still failing after {waited:.0f}s (deadline {backoff.deadline_s:.0f}s): "
                    f"{type(exc).__name__}: {exc}"
                )) from exc
            delay = min(backoff.delay(attempt), max(0.0, backoff.deadline_s - waited))
            log.warning("%s failed, retrying", what, extra={"fields": {
                "dependency": what, "attempt": attempt + 1, "retry_in_s": round(delay, 3),
                "error": f"{type(exc).__name__}: {exc}"[:300]}})
            backoff.sleep(delay)
            attempt += 1
        else:
            if attempt:
                log.info("%s recovered", what, extra={"fields": {"dependency": what, "attempts": attempt + 1}})
            return result
