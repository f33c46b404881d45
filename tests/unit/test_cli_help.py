"""Every command of the project answers `--help` and does nothing else: run with every
server address pointing at a closed port, each exits 0 at once with its usage. A command
that ignored `--help` (the demo once recreated its topics) would try to connect and fail."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {
    "dataflow": ["-m", "bytewax.run", "dataflow", "--help"],
    "ops": ["-m", "ops", "--help"],
    "ops replay": ["-m", "ops", "replay", "--help"],
    "ops trace": ["-m", "ops", "trace", "--help"],
    "ops reconcile": ["-m", "ops", "reconcile", "--help"],
    "ops migrate": ["-m", "ops", "migrate", "--help"],
    "tools.demo": ["-m", "tools.demo", "--help"],
    "tools.run_local": ["-m", "tools.run_local", "--help"],
    "tools.feed": ["-m", "tools.feed", "--help"],
    "tools.watch": ["-m", "tools.watch", "--help"],
    "tools.scale_bench": ["-m", "tools.scale_bench", "--help"],
    "bench": ["-m", "bench", "--help"],
    "bench.floor": ["-m", "bench.floor", "--help"],
    "bench.naive": ["-m", "bench.naive", "--help"],
    "bench.passthrough": ["-m", "bench.passthrough", "--help"],
    "bench.feeder": ["-m", "bench.feeder", "--help"],
    "bench.profile": ["-m", "bench.profile", "--help"],
    "bench.staleness": ["-m", "bench.staleness", "--help"],
    "stack": ["stack/stack.py", "--help"],
}
# modules run as commands through another name (bench/__main__.py runs bench.run; the
# kustomize wrapper passes --help to kustomize itself)
RUN_AS = {
    "bench.run": "bench",
    "ops.cli": "ops",
    "stack.stack": "stack",
    "tools.kustomize": None,
    "tools.promtool": None,
}
CLOSED = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    "PG_DSN": "postgresql://nobody@127.0.0.1:1/none",
    "SCYLLA_HOSTS": "127.0.0.1",
    "SCYLLA_PORT": "1",
    "STACK_DIR": "/nonexistent/stack",
}


def test_every_command_is_listed() -> None:
    found = set()
    for path in [*ROOT.glob("tools/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("ops/*.py"), *ROOT.glob("stack/*.py")]:
        if re.search(r'^if __name__ == "__main__":', path.read_text(), re.MULTILINE):
            found.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    listed = {RUN_AS.get(m, m) for m in found} - {None}
    assert listed <= set(COMMANDS), f"commands without a --help test: {listed - set(COMMANDS)}"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_has_no_side_effects(name: str) -> None:
    run = subprocess.run(
        [sys.executable, *COMMANDS[name]],
        cwd=ROOT,
        env={**os.environ, **CLOSED},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage:" in run.stdout
    assert run.stderr == ""
