"""Decode and validate one input record: pure, never raises for any input.

The result is a `Decoded` or a `Failure` carrying the contract's code, stage, message and
the JSON path of the field at fault. Decoders are built once, at import.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import msgspec

from flows.model import Code, Decoded, Event, Failure, SourceRecord, Stage

_EVENT_DECODER = msgspec.json.Decoder(Event)
_ANY_DECODER = msgspec.json.Decoder()
_PATH = re.compile(r" - at `(\$[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")
_WS = b" \t\r\n"


def decode_record(record: SourceRecord, max_bytes: int) -> Decoded | Failure:
    """Turn one Kafka record into a validated event, or say exactly why not."""
    value = record.value
    if not value:
        return Failure(record, Code.EMPTY_VALUE, Stage.DECODE, "the record has no value (null or empty)")
    if len(value) > max_bytes:
        return Failure(
            record, Code.PAYLOAD_TOO_LARGE, Stage.DECODE,
            f"the value is {len(value)} bytes, over the limit of {max_bytes} bytes",
        )
    try:
        # msgspec skips unknown fields without checking their UTF-8, but they pass through
        # to the output, so the whole value must be valid UTF-8
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Failure(record, Code.INVALID_JSON, Stage.DECODE, f"the value is not UTF-8: {exc.reason} "
                       f"at byte {exc.start}")
    try:
        event = _EVENT_DECODER.decode(value)
    except msgspec.ValidationError as exc:
        return _schema_failure(record, value, str(exc))
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return Failure(record, Code.INVALID_JSON, Stage.DECODE, f"the value is not JSON: {exc}")
    if bytes(event.payload).lstrip(_WS)[:1] != b"{":
        return _schema_failure(record, value, "Expected `object` - at `$.payload`")
    return Decoded(record, event)


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
    readable = _readable_fields(doc)
    return Failure(record, Code.SCHEMA_VIOLATION, Stage.VALIDATE, message, field=path, **readable)


def _readable_fields(doc: Any) -> dict[str, Any]:
    """What can still be read of a JSON object that failed validation, for the history row."""
    if not isinstance(doc, dict):
        return {}
    out: dict[str, Any] = {}
    for name, limit in (("event_id", 128), ("event_type", 128), ("customer_id", 64)):
        value = doc.get(name)
        if isinstance(value, str) and 1 <= len(value) <= limit:
            out[name] = value
    occurred = doc.get("occurred_at")
    if isinstance(occurred, str):
        try:
            parsed = msgspec.convert(occurred, dt.datetime)
        except msgspec.ValidationError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            out["occurred_at"] = parsed
    payload = doc.get("payload")
    if isinstance(payload, dict):
        out["payload"] = msgspec.json.encode(payload).decode()
    return out
