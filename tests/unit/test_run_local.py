"""tools.run_local: the commands and environments of a local cluster."""

from __future__ import annotations

import sys
from pathlib import Path

from tools.run_local import child_env, commands


def test_launcher_commands() -> None:
    one = commands(1, 2, 2101, Path("/r"), 10, 0)
    assert one == [[sys.executable, "-m", "bytewax.run", "dataflow", "-w", "2", "-r", "/r", "-s", "10", "-b", "0"]]
    two = commands(2, 1, 5000, None, 10, 0)
    assert [c[-4:] for c in two] == [
        ["-i", "0", "-a", "127.0.0.1:5000;127.0.0.1:5001"],
        ["-i", "1", "-a", "127.0.0.1:5000;127.0.0.1:5001"],
    ]
    assert "-r" not in two[0]
    own = commands(2, 1, 5000, Path("/r"), 10, 0, separate=True)
    assert [c[c.index("-r") + 1] for c in own] == ["/r/process-0", "/r/process-1"]


def test_launcher_gives_each_process_its_own_api_port() -> None:
    assert "BYTEWAX_DATAFLOW_API_PORT" not in child_env({}, 1, 3030, "/tmp/x")
    env = child_env({"BYTEWAX_DATAFLOW_API_ENABLED": "true"}, 1, 3030, "/tmp/x")
    assert env["BYTEWAX_DATAFLOW_API_PORT"] == "3031"
    assert env["BYTEWAX_DATAFLOW_API_CACHE_PATH"] == "/tmp/x"
