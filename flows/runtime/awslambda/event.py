"""The event source mapping's event in, the invocation's summary out. Pure: no client library
is imported here, so parsing is tested in microseconds and needs no server.

The event (Amazon MSK: `aws:kafka`; self-managed Kafka: `SelfManagedKafka`) groups
records under "<topic>-<partition>" keys. Each record carries `key` and `value` in base64
(missing or null for a null key and for a tombstone) and `headers` as a list of
single-entry maps from a header name to a list of byte values. Lambda's poller is written in
Java, whose bytes are signed, so a header byte may arrive as -61 as well as 195: both are
accepted. Records become `flows.core.model.SourceRecord`, exactly what the dataflow's Kafka source
emits, so everything downstream is the same code.
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from flows.core.headers import from_pairs
from flows.core.model import Outcome, SourceRecord
from flows.errors import ConfigurationError, SettingsError

# what AWS sends for Amazon MSK and for self-managed Kafka (the Lambda developer guide's
# example event), and the spelling some tools and older examples use
EVENT_SOURCES = ("aws:kafka", "SelfManagedKafka", "aws:SelfManagedKafka")
NO_TIMESTAMP = -1  # what confluent-kafka reports for a record without one


class MalformedEvent(ConfigurationError, ValueError):
    """The event is not a Kafka event source mapping event; the message says where and why.

    Raised before any record is processed, so nothing is written for a malformed event."""


class KafkaBatch(msgspec.Struct, frozen=True):
    """One invocation's records, in the order the event lists them (per partition: by offset)."""

    event_source: str
    records: list[SourceRecord]


def parse_event(event: object) -> KafkaBatch:
    """The records of an event source mapping event, or `MalformedEvent`."""
    if not isinstance(event, Mapping):
        raise MalformedEvent(f"the event is {_kind(event)}, not an object")
    source = event.get("eventSource")
    if source not in EVENT_SOURCES:
        raise MalformedEvent(f"eventSource is {source!r}; this handler takes {' or '.join(map(repr, EVENT_SOURCES))}")
    groups = event.get("records")
    if groups is None:
        raise MalformedEvent("the event has no 'records'")
    if not isinstance(groups, Mapping):
        raise MalformedEvent(f"'records' is {_kind(groups)}, not an object of '<topic>-<partition>' keys")
    records: list[SourceRecord] = []
    for group, items in groups.items():
        if not isinstance(items, list):
            raise MalformedEvent(f"records[{group!r}] is {_kind(items)}, not a list of records")
        for i, item in enumerate(items):
            records.append(_record(item, f"records[{group!r}][{i}]"))
    return KafkaBatch(source, records)


def _record(item: object, where: str) -> SourceRecord:
    if not isinstance(item, Mapping):
        raise MalformedEvent(f"{where} is {_kind(item)}, not a record object")
    topic = item.get("topic")
    if not isinstance(topic, str) or not topic:
        raise MalformedEvent(f"{where}.topic is {topic!r}, not a topic name")
    timestamp = item.get("timestamp")
    headers, header_error = from_pairs(_headers(item.get("headers"), where))
    return SourceRecord(
        topic=topic,
        partition=_int(item, "partition", where),
        offset=_int(item, "offset", where),
        timestamp_ms=NO_TIMESTAMP if timestamp is None else _int(item, "timestamp", where),
        key=_base64(item, "key", where),
        value=_base64(item, "value", where),
        headers=headers,
        header_error=header_error,
    )


def _int(item: Mapping[str, Any], name: str, where: str) -> int:
    value = item.get(name)
    if type(value) is not int:  # bool is an int subclass, and not a partition
        raise MalformedEvent(f"{where}.{name} is {value!r}, not an integer")
    return value


def _base64(item: Mapping[str, Any], name: str, where: str) -> bytes | None:
    """Missing and null both mean null (a record without key; a tombstone)."""
    raw = item.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise MalformedEvent(f"{where}.{name} is {_kind(raw)}, not a base64 string")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedEvent(f"{where}.{name} is not valid base64: {exc}") from None


def _headers(raw: object, where: str) -> list[tuple[bytes, bytes | None]]:
    """(name, value) pairs in the event's order, names as the UTF-8 bytes of the event's
    text (a lone surrogate, which JSON can carry as an escape, stays a byte sequence that
    is not UTF-8: the record is then `invalid_headers`, as it would be in the dataflow); a
    null value stays None, as confluent-kafka gives it to the dataflow."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise MalformedEvent(f"{where}.headers is {_kind(raw)}, not a list")
    out: list[tuple[bytes, bytes | None]] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise MalformedEvent(f"{where}.headers[{i}] is {_kind(entry)}, not a {{name: [bytes]}} object")
        for name, value in entry.items():
            if not isinstance(name, str):
                raise MalformedEvent(f"{where}.headers[{i}] has a name that is not a string")
            out.append((name.encode("utf-8", "surrogatepass"), _header_value(value, f"{where}.headers[{i}][{name!r}]")))
    return out


def _header_value(value: object, where: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(type(b) is int and -128 <= b <= 255 for b in value):
        raise MalformedEvent(f"{where} is not a list of byte values (-128..255)")
    return bytes(b & 0xFF for b in value)


def _kind(value: object) -> str:
    return "null" if value is None else f"a {type(value).__name__}"


def reject_own_outputs(batch: KafkaBatch, output_topic: str, failure_topic: str) -> None:
    """A mapping on the output or failure topic would enrich the pipeline's own messages
    again and again; refuse before writing anything, naming the setting."""
    for record in batch.records:
        for name, topic in (("OUTPUT_TOPIC", output_topic), ("FAILURE_TOPIC", failure_topic)):
            if record.topic == topic:
                raise SettingsError(
                    f"{name}={topic!r}: the event source mapping delivers records of this topic; "
                    "the handler would process its own output in a loop"
                )


def summarise(batch: KafkaBatch, results: Sequence[Outcome]) -> dict[str, Any]:
    """The invocation's return value: counts by outcome and by failure code. JSON-ready."""
    failed = Counter(r.history.error_code or "unknown" for r in results if not r.ok)
    return {
        "event_source": batch.event_source,
        "records": len(results),
        "enriched": len(results) - sum(failed.values()),
        "failed": sum(failed.values()),
        "failed_by_code": dict(sorted(failed.items())),
    }
