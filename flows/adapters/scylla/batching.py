"""History rows in unlogged batches: one request for several rows saves the client and the
server most of their per-request work. Still idempotent upserts; a failed batch is retried
whole. The limits are settings (HISTORY_BATCH_ROWS, HISTORY_BATCH_BYTES): the defaults stay
under ScyllaDB's batch warning (128 KiB) and stock Cassandra's failure threshold (50 KiB);
a row too big for the budget goes alone, as a plain INSERT."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

# what Cassandra counts for a row beyond its text values (cells, timestamps, clustering),
# as its batch size warning reports it
ROW_OVERHEAD_BYTES = 224


def row_size(row: tuple[Any, ...]) -> int:
    """Cassandra's size of a row, estimated (characters for bytes: non-ASCII text counts
    short, which at worst draws a server warning; the failure threshold is 10x higher)."""
    return ROW_OVERHEAD_BYTES + sum(len(v) for v in row if type(v) is str)


def one_group(row: tuple[Any, ...]) -> Hashable:
    """Every row in one group (a single node: batches need not follow replicas)."""
    return None


def plan_batches(
    rows: Sequence[tuple[Any, ...]],
    max_bytes: int,
    max_rows: int,
    group_of: Callable[[tuple[Any, ...]], Hashable] = one_group,
) -> list[list[tuple[Any, ...]]]:
    """Every row in exactly one batch: rows of one group, at most `max_rows` and
    `max_bytes` (estimated) per batch; a row over `max_bytes` alone."""
    batches: list[list[tuple[Any, ...]]] = []
    filling: dict[Hashable, tuple[list[tuple[Any, ...]], int]] = {}
    for row in rows:
        size = row_size(row)
        if size > max_bytes:
            batches.append([row])
            continue
        key = group_of(row)
        current = filling.get(key)
        if current is not None and (len(current[0]) >= max_rows or current[1] + size > max_bytes):
            batches.append(current[0])
            current = None
        if current is None:
            filling[key] = ([row], size)
        else:
            current[0].append(row)
            filling[key] = (current[0], current[1] + size)
    batches.extend(batch for batch, _ in filling.values())
    return batches
