"""ops.rewind's pure parts: the target offsets, the snapshot store it rewrites (a SQLite file
laid out as Bytewax's recovery partitions), and the step it looks for (the flow's input)."""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path

import pytest
from bytewax.testing import TestingSink, TestingSource

from flows.app import compose
from flows.runtime.bytewax.flow import build_flow
from flows.settings import Settings
from ops import rewind
from ops.errors import OpsError


def test_the_input_step_is_the_flows() -> None:
    app = compose.build(Settings.from_env({}), registry=None)
    flow = build_flow(app, TestingSource([]), TestingSink([]), lambda: None)  # type: ignore[arg-type, return-value]
    assert [s.step_id for s in flow.substeps][0] == rewind.INPUT_STEP


def test_offsets_parse_with_and_without_a_partition() -> None:
    assert rewind.parse_offset("100") == (None, 100)
    assert rewind.parse_offset("3:7") == (3, 7)
    for bad in ("x", "-1", "1:-2", "a:1"):
        with pytest.raises(ValueError):
            rewind.parse_offset(bad)


def store(path: Path, rows: list[tuple[str, str, int, bytes | None]]) -> Path:
    db = path / "part-0.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE snaps (created_at TEXT, step_id TEXT NOT NULL, state_key TEXT NOT NULL, "
            "snap_epoch INTEGER NOT NULL, ser_change BLOB, PRIMARY KEY (step_id, state_key, snap_epoch))"
        )
        conn.executemany("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)", rows)
    return db


def test_snapshots_are_read_at_their_latest_epoch_and_rewritten_at_every_epoch(tmp_path: Path) -> None:
    step = rewind.INPUT_STEP
    db = store(
        tmp_path,
        [
            (step, "0-events", 3, pickle.dumps(40)),
            (step, "0-events", 5, pickle.dumps(90)),
            (step, "1-events", 5, pickle.dumps(70)),
            (step, "0-other", 5, pickle.dumps(1)),
            ("enrichment.other_step", "0-events", 5, pickle.dumps(5)),
        ],
    )
    assert rewind.snapshots([db], "events") == {0: 90, 1: 70}
    moves = [rewind.Move(0, 0, 100, 90, 90, 10)]
    assert rewind.write_snapshots([db], "events", moves) == 2
    assert rewind.snapshots([db], "events") == {0: 10, 1: 70}


def test_a_snapshot_that_is_not_a_position_is_never_unpickled(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    db = store(tmp_path, [(rewind.INPUT_STEP, "0-events", 1, pickle.dumps(Evil()))])
    with pytest.raises(pickle.UnpicklingError):
        rewind.snapshots([db], "events")


def test_a_directory_without_recovery_partitions_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OpsError, match="no part-"):
        rewind.snapshot_files([tmp_path])


def test_a_locked_directory_is_refused(tmp_path: Path) -> None:
    from flows.runtime.bytewax.recovery import hold_running_lock

    lock = hold_running_lock(tmp_path)
    try:
        with pytest.raises(OpsError, match="is running"), rewind.unused([tmp_path]):
            pass
    finally:
        lock.close()
    with rewind.unused([tmp_path]):
        pass
