import datetime as dt
import json

import pytest

from flows.decode import decode_record
from flows.model import Code, Decoded, Failure, Stage

from .fakes import GOOD, record

LIMIT = 1024


def fail(value: bytes | None) -> Failure:
    result = decode_record(record(value), LIMIT)
    assert isinstance(result, Failure), result
    return result


def good(**changes: object) -> bytes:
    doc = json.loads(GOOD)
    for k, v in changes.items():
        if v is None:
            doc.pop(k)
        else:
            doc[k] = v
    return json.dumps(doc).encode()


def test_good_event_decodes() -> None:
    result = decode_record(record(GOOD), LIMIT)
    assert isinstance(result, Decoded)
    assert result.event.event_id == "e1"
    assert result.event.occurred_at == dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)
    assert bytes(result.event.payload) == b'{"a":1}'


def test_payload_defaults_to_empty_object() -> None:
    result = decode_record(record(good(payload=None)), LIMIT)
    assert isinstance(result, Decoded) and bytes(result.event.payload) == b"{}"


@pytest.mark.parametrize("value", [None, b""])
def test_empty_value(value: bytes | None) -> None:
    f = fail(value)
    assert (f.code, f.stage, f.field) == (Code.EMPTY_VALUE, Stage.DECODE, None)


def test_too_large() -> None:
    f = fail(b"{" + b" " * LIMIT + b"}")
    assert f.code is Code.PAYLOAD_TOO_LARGE and "over the limit of 1024" in f.message


@pytest.mark.parametrize("value", [b"{nope", b"   ", b'{"a":1} trailing', b"\xff\xfe{}", b'{"x":"\xff"}',
                                   b'{"event_id":5,', b"\xef\xbb\xbf{}"])
def test_invalid_json(value: bytes) -> None:
    f = fail(value)
    assert (f.code, f.stage) == (Code.INVALID_JSON, Stage.DECODE)


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (good(customer_id=None), "$.customer_id"),
        (good(event_id=7), "$.event_id"),
        (good(event_id=""), "$.event_id"),
        (good(event_type="x" * 129), "$.event_type"),
        (good(customer_id="c" * 65), "$.customer_id"),
        (good(occurred_at="2024-05-01T12:00:00"), "$.occurred_at"),
        (good(occurred_at="yesterday"), "$.occurred_at"),
        (good(payload=[1]), "$.payload"),
        (good(payload="x"), "$.payload"),
        (b"[1, 2]", "$"),
        (b'"a string"', "$"),
    ],
)
def test_schema_violation_names_the_field(value: bytes, path: str) -> None:
    f = fail(value)
    assert (f.code, f.stage, f.field) == (Code.SCHEMA_VIOLATION, Stage.VALIDATE, path)
    assert f.message


def test_schema_violation_keeps_what_can_be_read() -> None:
    f = fail(good(occurred_at="nope"))
    assert (f.event_id, f.event_type, f.customer_id, f.occurred_at) == ("e1", "login", "C1", None)


def test_limits_are_inclusive() -> None:
    value = good(event_id="e" * 128, customer_id="c" * 64)
    assert isinstance(decode_record(record(value), LIMIT), Decoded)
