"""flows.retry: backoff, the deadline and the give-up hook, given a classification."""

import random

import pytest

from flows.errors import DependencyUnavailable
from flows.retry import Backoff, Kind, Retries, network_kind


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


def raising(exc: BaseException):  # type: ignore[no-untyped-def]
    def fn() -> None:
        raise exc

    return fn


def test_retries_until_success_with_capped_growing_jittered_delays() -> None:
    clock = Clock()
    calls = iter([ConnectionRefusedError()] * 8 + ["ok"])

    def flaky() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    assert Retries(30).call("pg", flaky, network_kind, backoff(clock)) == "ok"
    assert len(clock.sleeps) == 8
    assert all(0 <= s <= min(5.0, 0.1 * 2**i) for i, s in enumerate(clock.sleeps))


def test_gives_up_after_the_deadline_and_tells_the_hook() -> None:
    clock = Clock()
    seen: list[BaseException] = []
    with pytest.raises(DependencyUnavailable, match="pg: still failing after 30s"):
        Retries(30, give_up=seen.append).call(
            "pg", raising(ConnectionRefusedError("refused")), network_kind, backoff(clock)
        )
    assert clock.now == pytest.approx(30) and len(seen) == 1 and isinstance(seen[0], DependencyUnavailable)


@pytest.mark.parametrize("kind", [Kind.FATAL, Kind.RECORD])
def test_anything_but_retriable_raises_at_once(kind: Kind) -> None:
    clock = Clock()
    with pytest.raises(ValueError):
        Retries(30).call("pg", raising(ValueError("x")), lambda _: kind, backoff(clock))
    assert clock.sleeps == []


def test_network_errors_may_pass_and_the_rest_is_fatal() -> None:
    assert network_kind(ConnectionRefusedError()) is Kind.RETRIABLE and network_kind(TimeoutError()) is Kind.RETRIABLE
    assert network_kind(ValueError()) is Kind.FATAL


def test_the_observer_counts_retries_and_sees_the_dependency_go_and_come_back() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from flows.telemetry.metrics import Metrics

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    retries = Retries(30, observer=metrics)
    clock = Clock()
    calls = iter([ConnectionRefusedError(), TimeoutError(), "ok"])
    seen: list[int] = []

    def flaky() -> str:
        seen.append(metrics.up["postgresql"])
        item = next(calls)
        if isinstance(item, BaseException):
            raise item
        return item

    assert retries.call("postgresql lookup", flaky, network_kind, backoff(clock)) == "ok"
    assert seen == [1, 0, 0]  # down from the first failure until the call that worked
    assert metrics.up["postgresql"] == 1 and metrics.retries["postgresql"] == 2
    text = generate_latest(registry).decode()
    assert 'enrichment_dependency_retries_total{dependency="postgresql"} 2.0' in text
    assert 'enrichment_dependency_up{dependency="postgresql"} 1.0' in text
    assert 'enrichment_dependency_up{dependency="cassandra"} 1.0' in text
