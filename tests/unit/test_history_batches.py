"""How history rows are grouped into unlogged CQL batches (flows.history.plan_batches)."""

from __future__ import annotations

import datetime as dt

import msgspec

from flows.history import BATCH_MAX_BYTES, BATCH_MAX_ROWS, COLUMNS, ROW_OVERHEAD_BYTES, plan_batches, row_size
from flows.model import HistoryRow

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def row(i: int, payload: str = "{}", event_id: str | None = None) -> tuple[object, ...]:
    return msgspec.structs.astuple(HistoryRow(
        event_id=event_id or f"evt-{i}", source_topic="events", source_partition=i % 3, source_offset=i,
        status="enriched", error_code=None, event_type="login", customer_id="C1", occurred_at=NOW,
        processed_at=NOW, output_topic="events.enriched", payload=payload))


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
    batches = plan_batches(rows)
    flat = [r for b in batches for r in b]
    assert sorted(flat, key=lambda r: r[3]) == rows  # type: ignore[arg-type, return-value]
    for b in batches:
        assert len(b) <= BATCH_MAX_ROWS
        assert len(b) == 1 or sum(row_size(r) for r in b) <= BATCH_MAX_BYTES


def test_a_row_over_the_budget_goes_alone() -> None:
    big = row(1, payload="x" * (BATCH_MAX_BYTES + 1))
    batches = plan_batches([row(0), big, row(2)])
    assert [big] in batches
    assert sorted(len(b) for b in batches) == [1, 2]


def test_rows_of_different_groups_never_share_a_batch() -> None:
    rows = [row(i) for i in range(40)]
    batches = plan_batches(rows, group_of=lambda r: r[2])  # by source_partition
    assert all(len({r[2] for r in b}) == 1 for b in batches)
    assert sum(len(b) for b in batches) == 40


def test_no_rows_no_batches() -> None:
    assert plan_batches([]) == []
