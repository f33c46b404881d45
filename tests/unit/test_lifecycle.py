from pathlib import Path

from flows.lifecycle import ensure_recovery_dir, recovery_dir_from


def test_recovery_dir_from_flag_or_environment() -> None:
    assert recovery_dir_from(["dataflow", "-r", "/a", "-s", "5"], {}) == Path("/a")
    assert recovery_dir_from(["dataflow", "--recovery-directory", "/b"], {}) == Path("/b")
    assert recovery_dir_from(["dataflow"], {"BYTEWAX_RECOVERY_DIRECTORY": "/c"}) == Path("/c")
    assert recovery_dir_from(["dataflow", "-w", "2"], {}) is None


def test_recovery_dir_is_created_and_initialized_once(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "recovery"
    assert ensure_recovery_dir(target, 3) is True
    parts = sorted(p.name for p in target.glob("part-*.sqlite3"))
    assert len(parts) == 3
    assert ensure_recovery_dir(target, 3) is False
    assert sorted(p.name for p in target.glob("part-*.sqlite3")) == parts
