"""Running as a cluster: the process's place, recovery partition shares, the local launcher."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from flows.lifecycle import (
    ClusterPlace,
    RecoveryLayoutError,
    cluster_place,
    ensure_recovery_dir,
    partition_share,
    pod_ordinal,
)
from tools.run_local import child_env, commands


def parts(path: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in path.glob("part-*.sqlite3"))


def test_cluster_place_as_bytewax_run_reads_it(tmp_path: Path) -> None:
    assert cluster_place(["dataflow"], {}) == ClusterPlace(0, 1)
    assert cluster_place(["dataflow", "-w", "2"], {}) == ClusterPlace(0, 1)
    assert cluster_place(["dataflow", "-i", "1", "-a", "h:1;h:2;h:3"], {}) == ClusterPlace(1, 3)
    assert cluster_place(["dataflow"], {"BYTEWAX_PROCESS_ID": "0", "BYTEWAX_ADDRESSES": "a:1;b:1"}) == \
        ClusterPlace(0, 2)
    hostfile = tmp_path / "hostfile.txt"
    hostfile.write_text("enrichment-0.enrichment.ns.svc.cluster.local:9999\n"
                        "enrichment-1.enrichment.ns.svc.cluster.local:9999\n\n")
    k8s = {"BYTEWAX_POD_NAME": "enrichment-1", "BYTEWAX_STATEFULSET_NAME": "enrichment",
           "BYTEWAX_HOSTFILE_PATH": str(hostfile)}
    assert cluster_place(["dataflow"], k8s) == ClusterPlace(1, 2)
    with pytest.raises(ValueError, match="not among"):
        cluster_place(["dataflow", "-i", "2", "-a", "h:1;h:2"], {})


def test_pod_ordinal_is_what_bytewax_run_computes() -> None:
    assert [pod_ordinal(f"enrichment-{i}", "enrichment") for i in range(3)] == [0, 1, 2]
    assert pod_ordinal("my-flow-12", "my-flow") == 12


def test_partition_shares_cover_every_partition_once() -> None:
    for processes in (1, 2, 3, 5):
        shares = [partition_share(4, ClusterPlace(i, processes)) for i in range(processes)]
        assert sorted(k for share in shares for k in share) == [0, 1, 2, 3]


def test_shared_directory_gets_every_share(tmp_path: Path) -> None:
    assert ensure_recovery_dir(tmp_path, 4, ClusterPlace(0, 2)) is True
    assert parts(tmp_path) == [0, 2]
    assert ensure_recovery_dir(tmp_path, 4, ClusterPlace(1, 2)) is True
    assert parts(tmp_path) == [0, 1, 2, 3]
    assert not list(tmp_path.glob(".init-*")), "scratch space removed"
    # complete: any later number of processes uses it as it is
    assert ensure_recovery_dir(tmp_path, 4, ClusterPlace(2, 3)) is False
    assert parts(tmp_path) == [0, 1, 2, 3]


def test_per_process_directories_hold_each_partition_once(tmp_path: Path) -> None:
    dirs = [tmp_path / f"pod-{i}" for i in range(3)]
    for i, d in enumerate(dirs):
        ensure_recovery_dir(d, 4, ClusterPlace(i, 3))
    assert [parts(d) for d in dirs] == [[0, 3], [1], [2]]
    assert json.loads((dirs[0] / ".layout.json").read_text()) == {"partitions": 4, "processes": 3}
    assert ensure_recovery_dir(dirs[1], 4, ClusterPlace(1, 3)) is False, "restart: nothing to do"


def test_rescaling_per_process_directories_fails_loudly(tmp_path: Path) -> None:
    ensure_recovery_dir(tmp_path, 4, ClusterPlace(0, 2))
    with pytest.raises(RecoveryLayoutError, match="laid out for 2 processes, but this cluster has 3"):
        ensure_recovery_dir(tmp_path, 4, ClusterPlace(0, 3))


def test_more_processes_than_partitions(tmp_path: Path) -> None:
    assert ensure_recovery_dir(tmp_path, 2, ClusterPlace(3, 4)) is False
    assert parts(tmp_path) == []


def test_launcher_commands() -> None:
    one = commands(1, 2, 2101, Path("/r"), 10, 0)
    assert one == [[sys.executable, "-m", "bytewax.run", "dataflow", "-w", "2", "-r", "/r", "-s", "10", "-b", "0"]]
    two = commands(2, 1, 5000, None, 10, 0)
    assert [c[-4:] for c in two] == [["-i", "0", "-a", "127.0.0.1:5000;127.0.0.1:5001"],
                                     ["-i", "1", "-a", "127.0.0.1:5000;127.0.0.1:5001"]]
    assert "-r" not in two[0]
    own = commands(2, 1, 5000, Path("/r"), 10, 0, separate=True)
    assert [c[c.index("-r") + 1] for c in own] == ["/r/process-0", "/r/process-1"]


def test_launcher_gives_each_process_its_own_api_port() -> None:
    assert "BYTEWAX_DATAFLOW_API_PORT" not in child_env({}, 1, 3030, "/tmp/x")
    env = child_env({"BYTEWAX_DATAFLOW_API_ENABLED": "true"}, 1, 3030, "/tmp/x")
    assert env["BYTEWAX_DATAFLOW_API_PORT"] == "3031"
    assert env["BYTEWAX_DATAFLOW_API_CACHE_PATH"] == "/tmp/x"
