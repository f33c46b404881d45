"""The values that flow between the steps: records, events, failures, outcomes. Pure data."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated

import msgspec
from msgspec import Meta, Raw

Headers = list[tuple[str, bytes | None]]  # a header value may be null


class SourceRecord(msgspec.Struct, frozen=True, gc=False):
    """One Kafka input record as the pipeline sees it (what the sources emit)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers = []
    # set when a header name is not UTF-8: the names in `headers` are then escaped
    # (flows.kafka_headers) and the record fails as `invalid_headers` with this message
    header_error: str | None = None
    # which assignment of its partition read it (exactly-once: a record read before its
    # partition moved to another consumer is dropped, not written)
    epoch: int = 0

    @property
    def coordinates(self) -> str:
        """`topic:partition:offset`, the record's place in Kafka."""
        return f"{self.topic}:{self.partition}:{self.offset}"


class Event(msgspec.Struct, gc=False):
    """The input schema (docs/contract.md). Fields not listed are ignored here and kept in
    the output by splicing the original bytes, so they pass through unchanged."""

    event_id: Annotated[str, Meta(min_length=1, max_length=128)]
    event_type: Annotated[str, Meta(min_length=1, max_length=128)]
    occurred_at: Annotated[dt.datetime, Meta(tz=True)]
    customer_id: Annotated[str, Meta(min_length=1, max_length=64)]
    # kept raw: validated as an object, never re-encoded
    payload: Raw = Raw(b"{}")


class Customer(msgspec.Struct, frozen=True, gc=False):
    """One row of the `customers` table (the sample data and the tests seed these)."""

    customer_id: str
    name: str
    segment: str
    country: str
    status: str


class Code(StrEnum):
    """Failure codes (docs/contract.md); `error.code` carries the value."""

    EMPTY_VALUE = "empty_value"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_HEADERS = "invalid_headers"
    INVALID_FORMAT = "invalid_format"  # a Schema Registry format, and the value is not in its wire format
    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"
    CUSTOMER_NOT_FOUND = "customer_not_found"
    INTERNAL_ERROR = "internal_error"


class Stage(StrEnum):
    """Where a record failed; `error.stage` carries the value."""

    DECODE = "decode"
    VALIDATE = "validate"
    ENRICH = "enrich"
    INTERNAL = "internal"


class Decoded(msgspec.Struct, frozen=True, gc=False):
    """A record that passed decode and validation, waiting for enrichment; `members` are its
    top-level members' texts by name (`flows.core.jsonmembers`), for the output's splicing."""

    record: SourceRecord
    event: Event
    members: dict[str, Raw] = {}
    # a Schema Registry format's value rendered as JSON, which `members` index (None: the
    # record's value is the JSON)
    json: bytes | None = None


class Failure(msgspec.Struct, frozen=True, gc=False):
    """Why one record can't be processed; `event_id` etc. are what could be read of it."""

    record: SourceRecord
    code: Code
    stage: Stage
    message: str
    field: str | None = None
    event_id: str | None = None
    event_type: str | None = None
    customer_id: str | None = None
    occurred_at: dt.datetime | None = None
    payload: str | None = None


class OutMessage(msgspec.Struct, frozen=True, gc=False):
    """A message for one of the two output topics."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


class HistoryRow(msgspec.Struct, frozen=True, gc=False):
    """One row of `event_history` (docs/contract.md, History)."""

    event_id: str
    source_topic: str
    source_partition: int
    source_offset: int
    status: str
    error_code: str | None
    event_type: str | None
    customer_id: str | None
    occurred_at: dt.datetime | None
    processed_at: dt.datetime
    output_topic: str
    payload: str | None


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """What one input record became: its message (success or dead letter) and its history
    row, with the record itself (a message a topic refuses at run time is re-routed from
    it). `ok` is True for an enriched record; `code` is the failure code otherwise."""

    ok: bool
    message: OutMessage
    history: HistoryRow
    record: SourceRecord
    code: Code | None = None
