import datetime as dt
import json

import msgspec

from flows.core import outcome
from flows.core.decode import decode_record
from flows.core.model import Code, Decoded, Failure, Stage

from .fakes import ALICE_MEMBER, GOOD, record

NOW = dt.datetime(2024, 6, 1, 8, 30, 15, 123456, tzinfo=dt.UTC)


def decoded(value: bytes = GOOD, key: bytes | None = b"k", headers=None) -> Decoded:
    d = decode_record(record(value, key=key, offset=42, partition=2, headers=headers), 1 << 20)
    assert isinstance(d, Decoded)
    return d


def test_success_keeps_every_input_field_and_adds_customer() -> None:
    r = outcome.success(decoded(), [ALICE_MEMBER], "out", NOW, outcome.rfc3339(NOW))
    doc = json.loads(r.message.value)
    assert doc["extra"] == {"nested": [1, 2]} and doc["payload"] == {"a": 1}
    assert doc["occurred_at"] == "2024-05-01T12:00:00+02:00"  # as received
    assert doc["customer"] == {"name": "Alice", "segment": "retail", "country": "DE", "status": "active"}
    assert doc["enriched_at"] == "2024-06-01T08:30:15.123Z"
    assert r.ok and r.message.topic == "out" and r.message.key == b"k"
    # the original bytes are kept: the output starts with the input minus its closing brace
    assert r.message.value.startswith(GOOD[:-1])


def test_success_key_defaults_to_customer_id_and_headers_gain_source() -> None:
    r = outcome.success(
        decoded(key=None, headers=[("trace", b"1"), ("source.offset", b"999")]), [ALICE_MEMBER], "out", NOW, "t"
    )
    assert r.message.key == b"C1"
    assert r.message.headers == [
        ("trace", b"1"),
        ("source.topic", b"events"),
        ("source.partition", b"2"),
        ("source.offset", b"42"),
    ]


def test_input_that_already_has_customer_is_overwritten_not_duplicated() -> None:
    value = json.dumps({**json.loads(GOOD), "customer": "old", "enriched_at": 1}).encode()
    r = outcome.success(decoded(value), [ALICE_MEMBER], "out", NOW, "T")
    doc = msgspec.json.decode(r.message.value)
    assert doc["customer"]["name"] == "Alice" and doc["enriched_at"] == "T"
    assert r.message.value.count(b'"customer"') == 1


def test_history_row_of_success() -> None:
    h = outcome.success(decoded(), [ALICE_MEMBER], "out", NOW, "t").history
    assert (h.event_id, h.status, h.error_code, h.customer_id, h.output_topic) == ("e1", "enriched", None, "C1", "out")
    assert (h.source_topic, h.source_partition, h.source_offset) == ("events", 2, 42)
    assert h.occurred_at == dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC) and h.payload == '{"a":1}'


def test_failure_message_is_the_input_byte_for_byte_with_reason_headers() -> None:
    rec = record(b"\x00garbage", key=None, offset=7, headers=[("h", b"v"), ("error.code", b"stale")])
    f = Failure(rec, Code.INVALID_JSON, Stage.DECODE, "bad", field=None)
    r = outcome.failure(f, "dlq", NOW)
    assert not r.ok and r.message.topic == "dlq"
    assert (r.message.key, r.message.value) == (None, b"\x00garbage")
    headers = dict(r.message.headers)
    assert [k for k, _ in r.message.headers].count("error.code") == 1
    assert headers["h"] == b"v" and headers["error.code"] == b"invalid_json"
    assert headers["error.stage"] == b"decode" and "error.field" not in headers
    assert headers["source.offset"] == b"7" and headers["source.timestamp"] == b"1700000000000"
    assert headers["failed_at"] == b"2024-06-01T08:30:15.123Z"
    assert r.history.event_id == "events:0:7" and r.history.status == "failed"
    assert r.history.error_code == "invalid_json" and r.history.output_topic == "dlq"


def test_error_message_is_capped_at_1_kib_on_a_character_boundary() -> None:
    f = Failure(record(b"x"), Code.SCHEMA_VIOLATION, Stage.VALIDATE, "é" * 2000, field="$.x")
    msg = dict(outcome.failure(f, "dlq", NOW).message.headers)["error.message"]
    assert len(msg) <= 1024 and msg.decode() == "é" * 512


def test_not_found_failure_points_at_the_key() -> None:
    f = outcome.not_found(decoded(), "customer", "$.customer_id", "C1", Code.CUSTOMER_NOT_FOUND)
    assert (f.code, f.stage, f.field, f.event_id) == (Code.CUSTOMER_NOT_FOUND, Stage.ENRICH, "$.customer_id", "e1")
    assert f.message == "no customer with customer_id 'C1'"


def test_an_input_with_customer_keeps_every_other_member_byte_for_byte() -> None:
    value = (
        b'{ "event_id":"e1", "customer" : {"name":"old"},"event_type":"login","amount":'
        b'0.1000000000000000055511151231257827, "big":1E2,"text":"\\u00e9\\n","occurred_at":'
        b'"2024-05-01T12:00:00+02:00","customer_id":"C1" ,"payload":{"a" : [1 , 2]},"enriched_at":0}'
    )
    r = outcome.success(decoded(value), [ALICE_MEMBER], "out", NOW, "T")
    out = r.message.value
    for member in (
        b'"event_id":"e1"',
        b'"amount":0.1000000000000000055511151231257827',
        b'"big":1E2',
        b'"text":"\\u00e9\\n"',
        b'"payload":{"a" : [1 , 2]}',
        b'"customer_id":"C1"',
    ):
        assert member in out
    doc = msgspec.json.decode(out)
    assert doc["customer"]["name"] == "Alice" and doc["enriched_at"] == "T"
    assert out.count(b'"customer"') == 1 and out.count(b'"enriched_at"') == 1 and b'"old"' not in out


def test_error_field_is_cut_to_1_kib() -> None:
    rec = record(b"{}", offset=1)
    r = outcome.failure(Failure(rec, Code.SCHEMA_VIOLATION, Stage.VALIDATE, "m", field="$." + "x" * 5000), "dlq", NOW)
    assert len(dict(r.message.headers)["error.field"]) <= 1024


def test_a_trimmed_dead_letter_keeps_the_reason_and_says_what_was_left_out() -> None:
    rec = record(b"x" * 100, key=b"k", offset=7, headers=[("h", b"v")])
    dead = outcome.failure(Failure(rec, Code.INVALID_JSON, Stage.DECODE, "not JSON"), "dlq", NOW).message
    no_headers = outcome.trimmed(dead, "too big.", ("headers",))
    headers = dict(no_headers.headers)
    assert no_headers.value == b"x" * 100 and no_headers.key == b"k" and "h" not in headers
    assert headers["error.code"] == b"invalid_json" and headers["error.omitted"] == b"headers"
    assert headers["error.message"].startswith(b"too big.") and b"not JSON" in headers["error.message"]
    assert headers["source.offset"] == b"7"
    stub = outcome.trimmed(dead, "x", ("value", "headers", "key"))
    assert stub.key is None and stub.value is None and dict(stub.headers)["error.omitted"] == b"value,headers,key"
