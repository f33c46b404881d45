"""The recovery directory of a Bytewax cluster: created and laid out when missing.

When the run command names a recovery directory (`-r DIR` or `BYTEWAX_RECOVERY_DIRECTORY`)
that lacks this process's partitions, they are created, under a file lock so processes
starting together don't race. Bytewax needs the cluster as a whole to hold each of the
`RECOVERY_PARTITIONS` partitions; a partition that several workers can see is used by one
of them. Process `i` of `n` creates the partitions `k` with `k % n == i`, so one directory
shared by local processes ends up with all of them, and per-process volumes (a Kubernetes
StatefulSet) hold each partition once.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from flows.errors import ConfigurationError

log = logging.getLogger(__name__)


def drop_recovery_config() -> bool:
    """Run without Bytewax's recovery: True once `bytewax.run`'s recovery configuration is
    gone, False when it can't be found (then the caller must refuse to start).

    Bytewax 0.21.1 with a recovery directory attaches the end of a run to the snapshots
    alone (`build_production_dataflow`: the probe watches `write_recovery` over the
    snapshots of fixed-partitioned inputs and stateful steps); a flow with neither (the
    exactly-once flow: a consumer-group input, stateless steps) is done the moment it
    starts, and exits 0 having read nothing. `python -m bytewax.run` parses its arguments
    into the module-level `kwargs` of its `__main__` before it imports the dataflow, and
    passes them to `cli_main` after: the import is where the recovery configuration can
    still be left out (tests/integration/test_shapes.py runs the flow this way)."""
    main = sys.modules.get("__main__")
    kwargs = getattr(main, "kwargs", None)
    if getattr(main, "__spec__", None) is None or main.__spec__.name != "bytewax.run":  # type: ignore[union-attr]
        return False
    if not isinstance(kwargs, dict) or "recovery_config" not in kwargs:
        return False
    kwargs["recovery_config"] = None
    return True


RUNNING_LOCK = ".running.lock"


def hold_running_lock(path: Path) -> IO[str]:
    """Hold the recovery directory's run lock, shared, for as long as the returned file is
    open (the process's life): `python -m ops rewind` takes it exclusively, so it can't
    move the snapshots under a running flow. Local processes sharing a directory all hold it."""
    lock = open(path / RUNNING_LOCK, "a")  # noqa: SIM115 - open for the life of the process
    fcntl.flock(lock, fcntl.LOCK_SH)
    return lock


def recovery_dir_from(argv: Sequence[str], env: Mapping[str, str]) -> Path | None:
    """The recovery directory `python -m bytewax.run` was given, if any."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-r", "--recovery-directory", default=env.get("BYTEWAX_RECOVERY_DIRECTORY"))
    known, _ = parser.parse_known_args(list(argv))
    return Path(known.recovery_directory) if known.recovery_directory else None


@dataclass(frozen=True)
class ClusterPlace:
    """This process's place in a Bytewax cluster: id `process_id` of `processes`."""

    process_id: int = 0
    processes: int = 1


def cluster_place(argv: Sequence[str], env: Mapping[str, str]) -> ClusterPlace:
    """Read the way `bytewax.run` reads it: `-i`/`BYTEWAX_PROCESS_ID`, else
    `BYTEWAX_POD_NAME` minus `BYTEWAX_STATEFULSET_NAME-` (Kubernetes); the addresses from
    `-a`/`BYTEWAX_ADDRESSES`, else one per line of `BYTEWAX_HOSTFILE_PATH`."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-i", "--process-id", type=int, default=env.get("BYTEWAX_PROCESS_ID"))
    parser.add_argument("-a", "--addresses", default=env.get("BYTEWAX_ADDRESSES"))
    known, _ = parser.parse_known_args(list(argv))
    process_id = None if known.process_id is None else int(known.process_id)
    if process_id is None and "BYTEWAX_POD_NAME" in env and "BYTEWAX_STATEFULSET_NAME" in env:
        process_id = pod_ordinal(env["BYTEWAX_POD_NAME"], env["BYTEWAX_STATEFULSET_NAME"])
    if process_id is None:
        return ClusterPlace()
    addresses: list[str] = []
    if known.addresses:
        addresses = [a for a in known.addresses.split(";") if a.strip()]
    elif "BYTEWAX_HOSTFILE_PATH" in env:
        addresses = [
            line.strip() for line in Path(env["BYTEWAX_HOSTFILE_PATH"]).read_text().splitlines() if line.strip()
        ]
    if not 0 <= process_id < max(len(addresses), 1):
        raise ValueError(f"process id {process_id} is not among the {len(addresses)} addresses")
    return ClusterPlace(process_id, max(len(addresses), 1))


def pod_ordinal(pod_name: str, statefulset: str) -> int:
    """The process id bytewax.run derives in Kubernetes: `<statefulset>-<ordinal>`."""
    return int(pod_name.replace(statefulset + "-", ""))


class RecoveryLayoutError(ConfigurationError):
    """The recovery directory was laid out for another number of processes."""


LAYOUT_FILE = ".layout.json"
_PART = re.compile(r"part-(\d+)\.sqlite3")


def partition_share(partitions: int, place: ClusterPlace) -> list[int]:
    """The recovery partitions process `place.process_id` creates."""
    return [k for k in range(partitions) if k % place.processes == place.process_id]


def _present(path: Path) -> set[int]:
    return {int(m.group(1)) for p in path.iterdir() if (m := _PART.fullmatch(p.name))}


def _create(path: Path, partitions: int, indices: Sequence[int]) -> None:
    """Create the partitions `indices` of `partitions`; each file appears whole (renamed
    into place), since other processes may be listing the directory."""
    from bytewax.recovery import init_db_dir

    scratch = path / f".init-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        init_db_dir(scratch, partitions)  # type: ignore[no-untyped-call]
        for k in indices:
            os.replace(scratch / f"part-{k}.sqlite3", path / f"part-{k}.sqlite3")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def ensure_recovery_dir(path: Path, partitions: int, place: ClusterPlace | None = None) -> bool:
    """Create `path` and this process's share of the recovery partitions when they are
    missing; True if it created any. Raises `RecoveryLayoutError` when a directory that
    holds only some partitions was laid out for another number of processes (rescaling
    per-process volumes would silently duplicate or drop partitions)."""
    place = place or ClusterPlace()
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        present = _present(path)
        layout_file = path / LAYOUT_FILE
        layout = json.loads(layout_file.read_text()) if layout_file.exists() else None
        if present:
            if layout is None:
                return False  # laid out by hand, or by `python -m bytewax.recovery`
            partitions = int(layout["partitions"])
            if present >= set(range(partitions)):
                return False  # every partition here: a directory all processes share
            if int(layout["processes"]) != place.processes:
                raise RecoveryLayoutError(
                    f"recovery directory {path} holds partitions {sorted(present)} of {partitions}, laid out "
                    f"for {layout['processes']} processes, but this cluster has {place.processes}: move the "
                    f"part-*.sqlite3 files so that each process holds its share (partition k on process "
                    f"k % processes), or delete every process's recovery data to start over"
                )
        missing = [k for k in partition_share(partitions, place) if k not in present]
        if missing:
            _create(path, partitions, missing)
        if layout is None:
            layout_file.write_text(json.dumps({"partitions": partitions, "processes": place.processes}))
        if missing:
            log.info(
                "initialized recovery partitions",
                extra={
                    "fields": {
                        "path": str(path),
                        "partitions": partitions,
                        "created": missing,
                        "process_id": place.process_id,
                        "processes": place.processes,
                    }
                },
            )
        return bool(missing)
