"""flows.adapters.scylla.batching and .codec: how history rows are grouped into unlogged CQL
batches and serialized."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from cassandra import cqltypes

from flows.adapters.scylla.batching import ROW_OVERHEAD_BYTES, plan_batches, row_size
from flows.adapters.scylla.codec import CQL_TYPES, can_encode, encode_row
from flows.adapters.scylla.session import COLUMNS
from flows.core.model import HistoryRow
from flows.settings import Settings

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DEFAULTS = Settings.from_env({})
BATCH_MAX_BYTES, BATCH_MAX_ROWS = DEFAULTS.history_batch_bytes, DEFAULTS.history_batch_rows


def plan(rows: list[tuple[object, ...]], **kwargs: object) -> list[list[tuple[object, ...]]]:
    return plan_batches(rows, BATCH_MAX_BYTES, BATCH_MAX_ROWS, **kwargs)  # type: ignore[arg-type]


def row(i: int, payload: str = "{}", event_id: str | None = None) -> tuple[object, ...]:
    return msgspec.structs.astuple(
        HistoryRow(
            event_id=event_id or f"evt-{i}",
            source_topic="events",
            source_partition=i % 3,
            source_offset=i,
            status="enriched",
            error_code=None,
            event_type="login",
            customer_id="C1",
            occurred_at=NOW,
            processed_at=NOW,
            output_topic="events.enriched",
            payload=payload,
        )
    )


def test_rows_bind_in_column_order() -> None:
    r = row(7)
    assert dict(zip(COLUMNS, r, strict=True))["source_offset"] == 7
    assert dict(zip(COLUMNS, r, strict=True))["payload"] == "{}"


def test_row_size_counts_text_plus_overhead() -> None:
    r = row(1, payload="x" * 100)
    text = sum(len(v) for v in r if isinstance(v, str))
    assert row_size(r) == ROW_OVERHEAD_BYTES + text


def test_every_row_in_exactly_one_batch_within_limits() -> None:
    rows = [row(i, payload="x" * (i * 37 % 700)) for i in range(500)]
    batches = plan(rows)
    flat = [r for b in batches for r in b]
    assert sorted(flat, key=lambda r: r[3]) == rows  # type: ignore[arg-type, return-value]
    for b in batches:
        assert len(b) <= BATCH_MAX_ROWS
        assert len(b) == 1 or sum(row_size(r) for r in b) <= BATCH_MAX_BYTES


def test_a_row_over_the_budget_goes_alone() -> None:
    big = row(1, payload="x" * (BATCH_MAX_BYTES + 1))
    batches = plan([row(0), big, row(2)])
    assert [big] in batches
    assert sorted(len(b) for b in batches) == [1, 2]


def test_rows_of_different_groups_never_share_a_batch() -> None:
    rows = [row(i) for i in range(40)]
    batches = plan(rows, group_of=lambda r: r[2])  # by source_partition
    assert all(len({r[2] for r in b}) == 1 for b in batches)
    assert sum(len(b) for b in batches) == 40


def test_no_rows_no_batches() -> None:
    assert plan([]) == []


def driver_bytes(row: tuple[object, ...]) -> list[bytes | None]:
    """What PreparedStatement.bind() would send, from the driver's own serializers."""
    types = {
        "varchar": cqltypes.UTF8Type,
        "int": cqltypes.Int32Type,
        "bigint": cqltypes.LongType,
        "timestamp": cqltypes.DateType,
    }
    return [None if v is None else types[t].serialize(v, 4) for v, t in zip(row, CQL_TYPES, strict=True)]


@pytest.mark.parametrize(
    "moment",
    [
        NOW,
        dt.datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),  # before the epoch, sub-millisecond
        dt.datetime(1, 1, 1, tzinfo=dt.UTC),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC),
        dt.datetime(2026, 1, 1, 0, 0, 0, 500),  # naive: UTC, as the driver reads it
    ],
)
def test_encode_row_matches_the_driver(moment: dt.datetime) -> None:
    r = msgspec.structs.astuple(
        HistoryRow(
            event_id="évt-ü-🚀",
            source_topic="events",
            source_partition=2**31 - 1,
            source_offset=2**63 - 1,
            status="failed",
            error_code="schema_violation",
            event_type=None,
            customer_id=None,
            occurred_at=moment,
            processed_at=moment,
            output_topic="events.failed",
            payload=None,
        )
    )
    assert encode_row(r) == driver_bytes(r)
    assert encode_row(row(3)) == driver_bytes(row(3))


class _Col:
    def __init__(self, name: str, typename: str) -> None:
        self.name, self.type = name, type("T", (), {"typename": typename})


class _Prepared:
    def __init__(self, cols: list[tuple[str, str]], policy: object = None) -> None:
        self.column_metadata = [_Col(n, t) for n, t in cols]
        self.column_encryption_policy = policy


def test_encode_only_for_the_table_it_knows() -> None:
    exact = list(zip(COLUMNS, CQL_TYPES, strict=True))
    assert can_encode(_Prepared(exact))  # type: ignore[arg-type]
    assert not can_encode(_Prepared(exact, policy=object()))  # type: ignore[arg-type]
    assert not can_encode(_Prepared(exact[:-1] + [("payload", "blob")]))  # type: ignore[arg-type]
    assert not can_encode(_Prepared(exact[1:] + exact[:1]))  # type: ignore[arg-type]
