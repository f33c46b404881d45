import random

import psycopg
import psycopg_pool
import pytest
from cassandra import OperationTimedOut, Unavailable
from cassandra.cluster import NoHostAvailable
from confluent_kafka import KafkaError, KafkaException

from flows import retry
from flows.retry import Backoff, DependencyUnavailable, is_retriable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def backoff(clock: Clock, deadline: float = 30) -> Backoff:
    return Backoff(deadline, base_s=0.1, cap_s=5.0, clock=clock, sleep=clock.sleep, rng=random.Random(1))


@pytest.mark.parametrize("exc", [
    psycopg.OperationalError("connection refused"), psycopg_pool.PoolTimeout("no connection"),
    NoHostAvailable("down", {}), OperationTimedOut(), Unavailable("x"), ConnectionRefusedError(),
    TimeoutError(), KafkaException(KafkaError(KafkaError._TRANSPORT)),
])
def test_dependency_failures_that_may_pass_are_retriable(exc: BaseException) -> None:
    assert is_retriable(exc)


@pytest.mark.parametrize("exc", [
    psycopg.errors.UndefinedTable("no table"), psycopg.ProgrammingError("bad sql"), ValueError("bug"),
    KeyError("x"), KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)),
])
def test_bugs_and_misconfiguration_are_not(exc: BaseException) -> None:
    assert not is_retriable(exc)


def test_retries_until_success_with_capped_growing_jittered_delays() -> None:
    clock = Clock()
    calls = iter([ConnectionRefusedError()] * 8 + ["ok"])

    def flaky() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    assert retry.retry("pg", flaky, backoff(clock)) == "ok"
    assert len(clock.sleeps) == 8
    assert all(0 <= s <= min(5.0, 0.1 * 2 ** i) for i, s in enumerate(clock.sleeps))


def test_gives_up_after_the_deadline_and_calls_the_hook() -> None:
    clock = Clock()
    seen: list[BaseException] = []
    retry.set_give_up(seen.append)
    try:
        with pytest.raises(DependencyUnavailable, match="pg: still failing after 30s"):
            retry.retry("pg", lambda: (_ for _ in ()).throw(ConnectionRefusedError("refused")), backoff(clock))
    finally:
        retry.set_give_up(None)
    assert clock.now == pytest.approx(30) and len(seen) == 1


def test_non_retriable_raises_at_once() -> None:
    clock = Clock()
    with pytest.raises(ValueError):
        retry.retry("pg", lambda: (_ for _ in ()).throw(ValueError("bug")), backoff(clock))
    assert clock.sleeps == []
