"""History rows as the CQL protocol's values, without `PreparedStatement.bind()`, which
costs several times more per row (a named tuple and an encryption-policy check per value,
calendar.timegm per timestamp). The bytes are the driver's own (the unit tests compare them
with cassandra.cqltypes); the writer uses this only when the prepared INSERT's columns have
exactly these types and no column encryption, and bind() otherwise."""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any

from cassandra.query import PreparedStatement

from flows.adapters.scylla.session import COLUMNS

CQL_TYPES = (
    "varchar",
    "varchar",
    "int",
    "bigint",
    "varchar",
    "varchar",
    "varchar",
    "varchar",
    "timestamp",
    "timestamp",
    "varchar",
    "varchar",
)
_INT = struct.Struct(">i").pack
_BIGINT = struct.Struct(">q").pack
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MILLISECOND = dt.timedelta(milliseconds=1)


def _text(value: str | None) -> bytes | None:
    return None if value is None else value.encode()


def _timestamp(value: dt.datetime | None) -> bytes | None:
    """Whole milliseconds since the epoch, rounded down, naive meaning UTC: what
    cassandra.cqltypes.DateType.serialize computes with calendar.timegm."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return _BIGINT((value - _EPOCH) // _MILLISECOND)


def encode_row(row: tuple[Any, ...]) -> list[bytes | None]:
    """A history row (COLUMNS order) as the protocol's values for the prepared INSERT."""
    (
        event_id,
        source_topic,
        source_partition,
        source_offset,
        status,
        error_code,
        event_type,
        customer_id,
        occurred_at,
        processed_at,
        output_topic,
        payload,
    ) = row
    return [
        _text(event_id),
        _text(source_topic),
        _INT(source_partition),
        _BIGINT(source_offset),
        _text(status),
        _text(error_code),
        _text(event_type),
        _text(customer_id),
        _timestamp(occurred_at),
        _timestamp(processed_at),
        _text(output_topic),
        _text(payload),
    ]


def can_encode(insert: PreparedStatement) -> bool:
    """Whether `encode_row` serializes for this INSERT (the table and types it knows)."""
    meta = insert.column_metadata or []
    return (
        getattr(insert, "column_encryption_policy", None) is None
        and tuple(c.name for c in meta) == COLUMNS
        and tuple(c.type.typename for c in meta) == CQL_TYPES
    )
