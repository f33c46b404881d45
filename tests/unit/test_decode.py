import datetime as dt
import json

import pytest

from flows.core.decode import decode_record
from flows.core.model import Code, Decoded, Failure, Stage

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


@pytest.mark.parametrize(
    "value",
    [b"{nope", b"   ", b'{"a":1} trailing', b"\xff\xfe{}", b'{"x":"\xff"}', b'{"event_id":5,', b"\xef\xbb\xbf{}"],
)
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


# --- the rules that keep every reader of the same bytes seeing the same event


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (
            b'{"event_id":"e1","event_type":"t","occurred_at":"2024-01-01T00:00:00Z","customer_id":"A",'
            b'"customer_id":"B"}',
            "$.customer_id",
        ),
        (
            b'{"x":1,"event_id":"e1","event_type":"t","occurred_at":"2024-01-01T00:00:00Z","customer_id":"A","x":1}',
            "$.x",
        ),
        (
            b'{"x":12,"event_id":"e1","event_type":"t","occurred_at":"2024-01-01T00:00:00Z","customer_id":"A","x":1}',
            "$.x",
        ),  # a later value that is a prefix of the earlier one
        (
            b'{"a b":{},"event_id":"e1","event_type":"t","occurred_at":"2024-01-01T00:00:00Z","customer_id":"A",'
            b'"a\\u0020b":[]}',
            '$["a b"]',
        ),  # the same name, escaped differently
        (
            b'{"k:1":1,"event_id":"e1","event_type":"t","occurred_at":"2024-01-01T00:00:00Z","customer_id":"A",'
            b'"k:1":1}',
            '$["k:1"]',
        ),  # a colon in the name
    ],
)
def test_a_member_name_that_appears_twice_is_a_schema_violation(value: bytes, path: str) -> None:
    f = fail(value)
    assert (f.code, f.stage, f.field) == (Code.SCHEMA_VIOLATION, Stage.VALIDATE, path)
    assert "appears more than once" in f.message
    assert f.event_id is None and f.customer_id is None, "no reader's view is taken for the history row"


def test_colons_inside_values_and_names_are_no_duplicates() -> None:
    value = (
        b'{"event_id":"e:1","event_type":"t","occurred_at":"2024-01-01T00:00:00Z","customer_id":"A",'
        b'"a:b":{"c:d":"e:f"},"payload":{"x":"1:2"}}'
    )
    assert isinstance(decode_record(record(value), LIMIT), Decoded)


def test_schema_violation_with_a_duplicate_reads_nothing_for_history() -> None:
    value = b'{"event_id":"e1","event_id":"e2","event_type":"t","occurred_at":"x","customer_id":"A"}'
    f = fail(value)
    assert f.code is Code.SCHEMA_VIOLATION and f.event_id is None


@pytest.mark.parametrize(
    "when", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-23:59", "0001-01-01T00:59:59.999+01:00"]
)
def test_occurred_at_outside_years_1_to_9999_in_utc_is_refused(when: str) -> None:
    f = fail(good(occurred_at=when))
    assert (f.code, f.field) == (Code.SCHEMA_VIOLATION, "$.occurred_at")
    assert f.occurred_at is None


@pytest.mark.parametrize(
    "when",
    ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00-14:00", "9999-12-31T23:59:59.999Z", "9999-12-31T10:00:00+10:00"],
)
def test_occurred_at_at_the_edges_is_accepted(when: str) -> None:
    assert isinstance(decode_record(record(good(occurred_at=when)), LIMIT), Decoded)


@pytest.mark.parametrize("where", ["payload", "extra", "top"])
def test_nesting_deeper_than_the_decoder_accepts_is_invalid_json(where: str) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    value = deep if where == "top" else good()[:-1] + f',"{where}":'.encode() + deep + b"}"
    if where == "payload":
        value = good(payload=None)[:-1] + b',"payload":{"x":' + deep + b"}}"
    result = decode_record(record(value), 1 << 20)
    assert isinstance(result, Failure)
    assert result.code is Code.INVALID_JSON and "nested deeper than the decoder accepts" in result.message


def test_a_record_with_a_header_name_that_is_not_utf8_is_invalid_headers() -> None:
    rec = record(GOOD, headers=[("ok", b"1"), ("bad\\xff", b"2")])
    rec = type(rec)(
        rec.topic,
        rec.partition,
        rec.offset,
        rec.timestamp_ms,
        rec.key,
        rec.value,
        rec.headers,
        "1 header name is not UTF-8",
    )
    result = decode_record(rec, LIMIT)
    assert isinstance(result, Failure)
    assert (result.code, result.stage, result.message) == (
        Code.INVALID_HEADERS,
        Stage.DECODE,
        "1 header name is not UTF-8",
    )


def test_the_members_are_kept_for_the_output_to_splice() -> None:
    value = (
        b'{"customer" : 1, "event_id":"e1","event_type":"t","occurred_at":"2024-01-01T00:00:00Z",'
        b'"customer_id":"A","enriched_at":[2]}'
    )
    result = decode_record(record(value), LIMIT)
    assert isinstance(result, Decoded)
    assert {name: bytes(raw) for name, raw in result.members.items()} == {
        "customer": b"1",
        "event_id": b'"e1"',
        "event_type": b'"t"',
        "occurred_at": b'"2024-01-01T00:00:00Z"',
        "customer_id": b'"A"',
        "enriched_at": b"[2]",
    }
