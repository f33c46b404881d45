"""flows.runtime.bytewax.recovery: the process's place in a cluster and the recovery directory's layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.runtime.bytewax.recovery import (
    ClusterPlace,
    RecoveryLayoutError,
    cluster_place,
    ensure_recovery_dir,
    partition_share,
    pod_ordinal,
    recovery_dir_from,
)


def parts(path: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in path.glob("part-*.sqlite3"))


def test_cluster_place_as_bytewax_run_reads_it(tmp_path: Path) -> None:
    assert cluster_place(["dataflow"], {}) == ClusterPlace(0, 1)
    assert cluster_place(["dataflow", "-w", "2"], {}) == ClusterPlace(0, 1)
    assert cluster_place(["dataflow", "-i", "1", "-a", "h:1;h:2;h:3"], {}) == ClusterPlace(1, 3)
    assert cluster_place(["dataflow"], {"BYTEWAX_PROCESS_ID": "0", "BYTEWAX_ADDRESSES": "a:1;b:1"}) == ClusterPlace(
        0, 2
    )
    hostfile = tmp_path / "hostfile.txt"
    hostfile.write_text(
        "enrichment-0.enrichment.ns.svc.cluster.local:9999\nenrichment-1.enrichment.ns.svc.cluster.local:9999\n\n"
    )
    k8s = {
        "BYTEWAX_POD_NAME": "enrichment-1",
        "BYTEWAX_STATEFULSET_NAME": "enrichment",
        "BYTEWAX_HOSTFILE_PATH": str(hostfile),
    }
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
