"""The values that flow between steps. Pure data: no client library is imported here."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Raw

Headers = list[tuple[str, bytes | None]]  # a header value may be null


class SourceRecord(msgspec.Struct, frozen=True, gc=False):
    """One Kafka input record as the pipeline sees it (what the source emits)."""

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

    @property
    def coordinates(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


class Event(msgspec.Struct, gc=False):
    """The input schema (contract: Input message). Fields not listed are ignored here and
    kept in the output by splicing the original bytes, so they pass through unchanged."""

    event_id: Annotated[str, Meta(min_length=1, max_length=128)]
    event_type: Annotated[str, Meta(min_length=1, max_length=128)]
    occurred_at: Annotated[dt.datetime, Meta(tz=True)]
    customer_id: Annotated[str, Meta(min_length=1, max_length=64)]
    # kept raw: validated as an object, never re-encoded
    payload: Raw = Raw(b"{}")
    # present only when the input carries fields the output sets itself
    customer: Any = UNSET
    enriched_at: Any = UNSET


class Customer(msgspec.Struct, frozen=True, gc=False):
    """Reference data for one customer (PostgreSQL `customers`)."""

    customer_id: str
    name: str
    segment: str
    country: str
    status: str


class Code(StrEnum):
    """Failure codes of the contract; `error.code` carries the value."""

    EMPTY_VALUE = "empty_value"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_HEADERS = "invalid_headers"
    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"
    CUSTOMER_NOT_FOUND = "customer_not_found"
    INTERNAL_ERROR = "internal_error"


class Stage(StrEnum):
    DECODE = "decode"
    VALIDATE = "validate"
    ENRICH = "enrich"
    INTERNAL = "internal"


class Decoded(msgspec.Struct, frozen=True, gc=False):
    """A record that passed decode and validation, waiting for enrichment. When the input
    has members the output sets itself (`customer`, `enriched_at`), `kept` holds the byte
    spans [start, end) of every other top-level member: the output is rebuilt from them."""

    record: SourceRecord
    event: Event
    kept: tuple[tuple[int, int], ...] = ()


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
    """One row of `event_history` (contract: History)."""

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


class Routed(msgspec.Struct, frozen=True, gc=False):
    """The final outcome of one input record: its output message and its history row, and
    the record itself (a message a topic refuses at run time is re-routed from it)."""

    ok: bool
    message: OutMessage
    history: HistoryRow
    record: SourceRecord
    code: Code | None = None
