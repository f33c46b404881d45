"""flows.failurelog: the first failure of each code at once, then one line per interval."""

import datetime as dt
import logging

import pytest

from flows.core import outcome as route
from flows.core.model import Code, Failure, Stage
from flows.telemetry.failurelog import FailureLog

from .fakes import record

NOW = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def failed(code: Code, offset: int):
    return route.failure(Failure(record(b"x", offset=offset), code, Stage.DECODE, "m"), "dlq", NOW)


def test_a_flood_of_failures_makes_a_bounded_number_of_lines(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    log = FailureLog(examples_per_code=2, clock=lambda: clock[0])
    caplog.set_level(logging.WARNING, logger="flows.failures")
    for batch in range(100):
        log.add([failed(Code.INVALID_JSON, batch * 100 + i) for i in range(100)])
        log.add([failed(Code.SCHEMA_VIOLATION, 50_000 + batch)])
    clock[0] = 10.0
    log.flush()
    lines = [(r.getMessage(), r.fields) for r in caplog.records]  # type: ignore[attr-defined]
    assert [m for m, _ in lines] == ["record failed", "record failed", "records failed"]
    assert lines[0][1] == {"code": "invalid_json", "topic": "events", "partition": 0, "offset": 0, "event_id": None}
    summary = lines[2][1]
    assert summary["failed"] == {"invalid_json": 10_000, "schema_violation": 100}
    assert summary["failed_total"] == 10_100 and summary["interval_s"] == 10.0
    assert [e["offset"] for e in summary["examples"]["invalid_json"]] == [1, 2]
    caplog.clear()
    log.flush()  # nothing failed since: no line
    log.add([failed(Code.INVALID_JSON, 1)])  # a new interval logs its first failure at once again
    assert [r.getMessage() for r in caplog.records] == ["record failed"]
