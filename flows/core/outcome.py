"""What a record becomes: its output message and history row (docs/contract.md). Pure.

Success: the input value with the lookups' members (`customer`) and `enriched_at` spliced
in; the original bytes are kept, so every input member passes through byte for byte.
Failure: the input key and value unchanged, the reason in headers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import msgspec

from flows.core.jsonmembers import member_spans
from flows.core.model import (
    Code,
    Decoded,
    Failure,
    Headers,
    HistoryRow,
    Outcome,
    OutMessage,
    SourceRecord,
    Stage,
)

RESERVED_HEADERS = frozenset(
    {
        "source.topic",
        "source.partition",
        "source.offset",
        "source.timestamp",
        "error.code",
        "error.stage",
        "error.message",
        "error.field",
        "error.omitted",
        "error.key",
        "failed_at",
    }
)
OMITTED_HEADER = "error.omitted"
KEY_HEADER = "error.key"  # "coordinates": the record had no key; this dead letter's is its coordinates
MAX_ERROR_MESSAGE = 1024
_WS = b" \t\r\n"
_ENC = msgspec.json.Encoder()


def rfc3339(moment: dt.datetime) -> str:
    """UTC, millisecond precision, `Z` suffix: 2024-05-01T12:00:00.123Z."""
    moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def member_fragment(member: str, value: object) -> bytes:
    """The `"member": {...}` text a lookup adds to an enriched event (computed once per key
    and cached with it)."""
    return _ENC.encode(member) + b":" + _ENC.encode(value)


def _input_headers(record: SourceRecord) -> Headers:
    """The input headers minus the names this pipeline sets, so each appears once."""
    headers = record.headers
    if not headers:
        return []
    return [(k, v) for k, v in headers if k not in RESERVED_HEADERS]


def _source_headers(record: SourceRecord) -> Headers:
    return [
        ("source.topic", record.topic.encode()),
        ("source.partition", b"%d" % record.partition),
        ("source.offset", b"%d" % record.offset),
    ]


def enriched_value(
    decoded: Decoded,
    fragments: Sequence[bytes],
    enriched_at: str,
    added: frozenset[str] = frozenset({"customer", "enriched_at"}),
) -> bytes:
    """The input value, its bytes kept, with the lookups' members and `enriched_at` added.
    An input that has members of the `added` names is rebuilt from its other members'
    text, byte for byte (only the whitespace between members changes)."""
    value = decoded.json if decoded.json is not None else decoded.record.value
    assert value is not None
    if added.isdisjoint(decoded.members):
        body = value.rstrip(_WS)[:-1].rstrip(_WS)  # a validated object ends with '}'
    else:
        kept = [value[start:end] for name, start, end in member_spans(value, decoded.members) if name not in added]
        body = b"{" + b",".join(kept)
    sep = b"" if body.endswith(b"{") else b","
    return b"".join((body, sep, *_joined(fragments), b'"enriched_at":"', enriched_at.encode(), b'"}'))


def _joined(fragments: Sequence[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for fragment in fragments:
        out += (fragment, b",")
    return out


def success(
    decoded: Decoded,
    fragments: Sequence[bytes],
    output_topic: str,
    now: dt.datetime,
    enriched_at: str,
    added: frozenset[str] = frozenset({"customer", "enriched_at"}),
) -> Outcome:
    """The enriched message and the `enriched` history row; `added` are the members the
    output sets (an input's own members of those names are replaced)."""
    record, event = decoded.record, decoded.event
    key = record.key if record.key is not None else event.customer_id.encode()
    message = OutMessage(
        topic=output_topic,
        key=key,
        value=enriched_value(decoded, fragments, enriched_at, added),
        headers=_input_headers(record) + _source_headers(record),
    )
    history = HistoryRow(
        event_id=event.event_id,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        status="enriched",
        error_code=None,
        event_type=event.event_type,
        customer_id=event.customer_id,
        occurred_at=event.occurred_at,
        processed_at=now,
        output_topic=output_topic,
        payload=bytes(event.payload).decode(),
    )
    return Outcome(True, message, history, record)


def truncate_utf8(text: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    """At most `limit` bytes of UTF-8, cut at a character boundary."""
    raw = text.encode()
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def failure(fail: Failure, failure_topic: str, now: dt.datetime) -> Outcome:
    """The dead letter (the record, the reason in headers) and the `failed` history row."""
    record = fail.record
    headers = _input_headers(record)
    headers += [
        ("error.code", fail.code.value.encode()),
        ("error.stage", fail.stage.value.encode()),
        ("error.message", truncate_utf8(fail.message).encode()),
    ]
    if fail.field:
        headers.append(("error.field", truncate_utf8(fail.field).encode()))
    headers += _source_headers(record)
    headers += [
        ("source.timestamp", str(record.timestamp_ms).encode()),
        ("failed_at", rfc3339(now).encode()),
    ]
    message = OutMessage(topic=failure_topic, key=record.key, value=record.value, headers=headers)
    history = HistoryRow(
        event_id=fail.event_id or record.coordinates,
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        status="failed",
        error_code=fail.code.value,
        event_type=fail.event_type,
        customer_id=fail.customer_id,
        occurred_at=fail.occurred_at,
        processed_at=now,
        output_topic=failure_topic,
        payload=fail.payload,
    )
    return Outcome(False, message, history, record, fail.code)


def not_found(decoded: Decoded, member: str, field: str, key: str, code: Code) -> Failure:
    """A lookup found nothing for the event's key (`customer_not_found` for customers)."""
    return _enrich_failure(decoded, code, f"no {member} with {field[2:]} {truncate_utf8(repr(key), 200)}", field)


def output_too_large(decoded: Decoded, size: int, limit: int, output_topic: str) -> Failure:
    """The enriched message would not fit the output topic (contract: payload_too_large)."""
    return _enrich_failure(
        decoded,
        Code.PAYLOAD_TOO_LARGE,
        f"the enriched message would be {size} bytes; the output topic {output_topic} "
        f"accepts {limit} (max.message.bytes)",
    )


def _enrich_failure(decoded: Decoded, code: Code, message: str, field: str | None = None) -> Failure:
    event = decoded.event
    return Failure(
        decoded.record,
        code,
        Stage.ENRICH,
        message,
        field=field,
        event_id=event.event_id,
        event_type=event.event_type,
        customer_id=event.customer_id,
        occurred_at=event.occurred_at,
        payload=bytes(event.payload).decode(),
    )


def internal_error(record: SourceRecord, exc: BaseException, decoded: Decoded | None = None) -> Failure:
    """The net under a bug: an unexpected exception while processing this one record."""
    message = f"{type(exc).__name__}: {exc}"
    if decoded is None:
        return Failure(record, Code.INTERNAL_ERROR, Stage.INTERNAL, message)
    event = decoded.event
    return Failure(
        record,
        Code.INTERNAL_ERROR,
        Stage.INTERNAL,
        message,
        event_id=event.event_id,
        event_type=event.event_type,
        customer_id=event.customer_id,
        occurred_at=event.occurred_at,
    )


def rerouted(routed: Outcome, code: Code, stage: Stage, message: str, failure_topic: str, now: dt.datetime) -> Outcome:
    """An enriched record that can't go out after all: its failure, keeping what its
    history row knew of the event."""
    h = routed.history
    fail = Failure(
        routed.record,
        code,
        stage,
        message,
        event_id=h.event_id,
        event_type=h.event_type,
        customer_id=h.customer_id,
        occurred_at=h.occurred_at,
        payload=h.payload,
    )
    return failure(fail, failure_topic, now)


def refused_by_output(routed: Outcome, reason: str, failure_topic: str, now: dt.datetime) -> Outcome:
    """An enriched message the output topic refused at run time (its size limit lowered
    under the running flow): the record goes to the failure topic as `payload_too_large`."""
    message = f"the output topic {routed.message.topic} refused the enriched message: {reason}"
    return rerouted(routed, Code.PAYLOAD_TOO_LARGE, Stage.ENRICH, message, failure_topic, now)


def keyed(message: OutMessage, note: str, omit: tuple[str, ...] = ()) -> OutMessage:
    """A dead letter of a record without a key, keyed by the record's coordinates
    (`<topic>:<partition>:<offset>`) for a failure topic that takes no record without a key
    (a compacted one); `error.key: coordinates` says so (a replay sends the record without
    a key again), and `omit` trims it further as `trimmed` does."""
    headers = dict(message.headers)
    coordinates = b"%s:%s:%s" % (
        headers.get("source.topic") or b"",
        headers.get("source.partition") or b"",
        headers.get("source.offset") or b"",
    )
    base = trimmed(message, note, omit) if omit else message
    extra: Headers = [(KEY_HEADER, b"coordinates")]
    if not omit:
        original = headers.get("error.message") or b""
        text = f"{note} Reason the record failed: {original.decode('utf-8', 'replace')}"
        kept = [(k, v) for k, v in base.headers if k != "error.message"]
        extra.append(("error.message", truncate_utf8(text).encode()))
        return OutMessage(base.topic, coordinates, base.value, kept + extra)
    return OutMessage(base.topic, coordinates, base.value, [*base.headers, *extra])


def trimmed(message: OutMessage, note: str, omit: tuple[str, ...]) -> OutMessage:
    """A dead letter that no topic setting lets through whole: first without the input's
    headers (`omit=("headers",)`; names escaped from bytes that are not UTF-8 can make them
    several times larger than they arrived), then also without the value (a record that
    arrived compressed), then without the key. `error.omitted` lists what was left out and
    `error.message` says why; the record itself stays in the input topic at `source.*`."""
    ours = [(k, v) for k, v in message.headers if k in RESERVED_HEADERS and k != "error.message"]
    headers = ours if "headers" in omit else [(k, v) for k, v in message.headers if k != "error.message"]
    original = next((v for k, v in message.headers if k == "error.message"), None) or b""
    text = f"{note} Reason the record failed: {original.decode('utf-8', 'replace')}"
    headers += [("error.message", truncate_utf8(text).encode()), (OMITTED_HEADER, ",".join(omit).encode())]
    return OutMessage(
        message.topic, None if "key" in omit else message.key, None if "value" in omit else message.value, headers
    )
