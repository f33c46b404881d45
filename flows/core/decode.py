"""Decode and validate one input record: pure, never raises for any input.

The result is a `Decoded` or a `Failure` carrying the contract's code, stage, message and
the JSON path of the field at fault. Decoders are built once, at import.

Beyond the schema, the rules that keep every reader of the same bytes seeing the same event
(docs/operations.md, "What happens to bad records"): the value is UTF-8 throughout (unknown members pass
through to the output); no top-level member name appears twice; `occurred_at` stays within
years 1..9999 once in UTC, so its history row reads back; a document nested deeper than the
decoder accepts is `invalid_json`; a header name that is not UTF-8 is `invalid_headers`.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from collections.abc import Callable
from typing import Any

import msgspec

from flows.core.jsonmembers import duplicate_name, member_path, raw_members
from flows.core.model import Code, Decoded, Event, Failure, SourceRecord, Stage

_EVENT_DECODER = msgspec.json.Decoder(Event)
_ANY_DECODER = msgspec.json.Decoder()
_PATH = re.compile(r" - at `(\$[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")
_WS = b" \t\r\n"


def _too_deep() -> str:
    return (
        f"the value is not JSON this pipeline can read: nested deeper than the decoder accepts "
        f"(about {sys.getrecursionlimit()} levels)"
    )


class Unreadable(Exception):
    """A value a format's reader can't turn into the event's JSON: the failure to record."""

    def __init__(self, code: Code, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


def _precheck(record: SourceRecord, max_bytes: int) -> Failure | None:
    """What fails a record whatever its format: no value, too large, bad header names."""
    value = record.value
    if not value:
        return Failure(record, Code.EMPTY_VALUE, Stage.DECODE, "the record has no value (null or empty)")
    if len(value) > max_bytes:
        return Failure(
            record,
            Code.PAYLOAD_TOO_LARGE,
            Stage.DECODE,
            f"the value is {len(value)} bytes, over the limit of {max_bytes} bytes",
        )
    if record.header_error is not None:
        return Failure(record, Code.INVALID_HEADERS, Stage.DECODE, record.header_error)
    return None


def decode_framed(record: SourceRecord, max_bytes: int, read: Callable[[bytes], bytes]) -> Decoded | Failure:
    """A record in a Schema Registry format: `read` turns its value into the event as JSON
    (or raises `Unreadable`), and that JSON is validated as a JSON input would be; the
    record itself, its original bytes included, is what a failure or the output carries."""
    early = _precheck(record, max_bytes)
    if early is not None:
        return early
    assert record.value is not None
    try:
        rendered = read(record.value)
    except Unreadable as exc:
        stage = Stage.DECODE if exc.code in (Code.INVALID_FORMAT, Code.INVALID_JSON) else Stage.VALIDATE
        return Failure(record, exc.code, stage, exc.message, field=exc.field)
    result = decode_record(msgspec.structs.replace(record, value=rendered), len(rendered))
    if isinstance(result, Decoded):
        return Decoded(record, result.event, result.members, rendered)
    return msgspec.structs.replace(result, record=record)


def decode_record(record: SourceRecord, max_bytes: int) -> Decoded | Failure:
    """Turn one Kafka record into a validated event, or say exactly why not."""
    early = _precheck(record, max_bytes)
    if early is not None:
        return early
    value = record.value
    assert value is not None
    try:
        # msgspec skips unknown fields without checking their UTF-8, but they pass through
        # to the output, so the whole value must be valid UTF-8
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Failure(
            record, Code.INVALID_JSON, Stage.DECODE, f"the value is not UTF-8: {exc.reason} at byte {exc.start}"
        )
    try:
        return _decode_json(record, value)
    except RecursionError:
        # how deep the decoder goes depends on the interpreter's stack where it runs: every
        # step that reads the document is under this one net
        return Failure(record, Code.INVALID_JSON, Stage.DECODE, _too_deep())


def _decode_json(record: SourceRecord, value: bytes) -> Decoded | Failure:
    try:
        event = _EVENT_DECODER.decode(value)
    except msgspec.ValidationError as exc:
        return _schema_failure(record, value, str(exc))
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return Failure(record, Code.INVALID_JSON, Stage.DECODE, f"the value is not JSON: {exc}")
    if bytes(event.payload).lstrip(_WS)[:1] != b"{":
        return _schema_failure(record, value, "Expected `object` - at `$.payload`")
    if not _in_utc_range(event.occurred_at):
        return _schema_failure(record, value, _OUT_OF_RANGE)
    members = raw_members(value)  # the same document again: it decodes
    duplicate = duplicate_name(value, members)
    if duplicate is not None:
        return Failure(
            record,
            Code.SCHEMA_VIOLATION,
            Stage.VALIDATE,
            f"the member name {_shown(duplicate)} appears more than once",
            field=member_path(duplicate),
        )
    return Decoded(record, event, members)


_OUT_OF_RANGE = "Timestamp outside years 1..9999 once converted to UTC - at `$.occurred_at`"


def _in_utc_range(moment: dt.datetime) -> bool:
    """Whether the moment is between years 1 and 9999 in UTC (what the history table's
    readers can represent); only the first and last years can fall out with an offset."""
    if 1 < moment.year < 9999:
        return True
    try:
        moment.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        return False
    return True


def _shown(name: str, limit: int = 200) -> str:
    text = msgspec.json.encode(name if len(name) <= limit else name[:limit]).decode()
    return text if len(name) <= limit else text[:-1] + '…"'


def _schema_failure(record: SourceRecord, value: bytes, message: str) -> Failure:
    """A validation error; first make sure the value is JSON at all (msgspec stops at the
    first problem it meets, which may be a type error before a syntax error)."""
    try:
        doc = _ANY_DECODER.decode(value)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return Failure(record, Code.INVALID_JSON, Stage.DECODE, f"the value is not JSON: {exc}")
    path = None
    match = _PATH.search(message)
    if match:
        path = match.group(1)
    else:
        missing = _MISSING.match(message)
        if missing:
            path = f"$.{missing.group(1)}"
        elif message.startswith("Expected"):
            path = "$"  # the document itself has the wrong type
    readable = _readable_fields(value, doc)
    return Failure(record, Code.SCHEMA_VIOLATION, Stage.VALIDATE, message, field=path, **readable)


_LIMITS = (("event_id", 128), ("event_type", 128), ("customer_id", 64))


def _readable_fields(value: bytes, doc: Any) -> dict[str, Any]:
    """What can still be read of a JSON object that failed validation, for the history row:
    nothing when a member name appears twice (the readers of these bytes disagree)."""
    if not isinstance(doc, dict):
        return {}
    try:
        members = raw_members(value)
        if duplicate_name(value, members) is not None:
            return {}
    except (msgspec.DecodeError, ValueError):
        return {}
    out: dict[str, Any] = {}
    for name, limit in _LIMITS:
        field = doc.get(name)
        if isinstance(field, str) and 1 <= len(field) <= limit:
            out[name] = field
    occurred = doc.get("occurred_at")
    if isinstance(occurred, str):
        try:
            parsed = msgspec.convert(occurred, dt.datetime)
        except msgspec.ValidationError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None and _in_utc_range(parsed):
            out["occurred_at"] = parsed
    payload = members.get("payload")
    if payload is not None and isinstance(doc.get("payload"), dict):
        out["payload"] = bytes(payload).decode()  # its text as received
    return out
