"""The fault matrix (tests/integration/matrix.py): each cell runs the flow in a shape users
run it, injects a fault mid-stream and checks what a user would: every input record in the
outputs (exactly once, or at least once with duplicates bounded by the snapshot interval),
its history row, the group's lag 0, clean final exits.

`make test` runs the fast slice (one cell per fix this matrix was built for); the other
cells are marked `resilience`, which `make test` deselects and `make test-resilience` runs.
Each cell prints a `[matrix]` line with its figures; MATRIX_REPORT=<file> collects them as
JSON lines, and `python -m tests.integration.matrix <file>` makes them a table.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cassandra.cluster import Session

from .matrix import CELLS, Cell, run_cell

FAST = [
    Cell("statefulset", "sigkill", "exactly-once"),  # a recovery directory; a peer gone
    Cell("one-process", "sigkill", "at-least-once"),  # duplicates bounded by the snapshots
    Cell("batch", "sigkill", "exactly-once"),  # STOP_AT_END drains the whole topic
    Cell("one-process", "output-error", "exactly-once"),  # a failed write aborts
    Cell("batch", "txn-input", "at-least-once"),  # transaction markers: drained, lag 0
    Cell("one-process", "cassandra", "exactly-once"),  # an outage past the transaction timeout
    Cell("one-process", "partitions", "at-least-once"),  # partitions added at run time
    Cell("one-process", "refusing", "exactly-once"),  # topics refusing writes at run time
    Cell("deployment", "sigstop", "exactly-once"),  # a zombie
    Cell("lambda", "output-error", "at-least-once"),  # the handler behind its event source mapping
]
assert all(c in CELLS for c in FAST)
# the rest of the matrix is marked `resilience`: `make test` deselects it, `make test-resilience` runs it
OUTAGES = ("cassandra", "postgres", "kafka")  # cells that stop a server: run alone (`outage`)


def marks(cell: Cell) -> list[pytest.MarkDecorator]:
    return ([] if cell in FAST else [pytest.mark.resilience]) + ([pytest.mark.outage] if cell.fault in OUTAGES else [])


PARAMS = [pytest.param(c, id=str(c), marks=marks(c)) for c in CELLS]


@pytest.mark.parametrize("cell", PARAMS)
def test_cell(cell: Cell, tmp_path: Path, cql: Session) -> None:
    run_cell(cell, tmp_path, cql)
