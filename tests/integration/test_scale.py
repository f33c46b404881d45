"""Scaling out: several workers per process and several processes, on the real servers.

The same input (same records, same seed) goes through 1 process x 1 worker, 1 x 2 and 2 x 1, each started as users do
(`python -m tools.run_local`, i.e. `make run`) with recovery on; every configuration must
give the same outcome for every input offset, exactly once, with its history row.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from cassandra.cluster import Session

from flows.settings import Settings
from tools.kafkautil import header, produce_all, read_topic

from .flowrun import ROOT
from .resilience import Accounting, Scenario

N = 6000
SEED = 61


# ports the tests' processes listen on: below the kernel's ephemeral range (32768-60999 here),
# where every outgoing connection takes its local port (a Kafka client's could take a port
# between its check and the process's bind), and a slice for each pytest-xdist worker, so
# two tests at once never pick the same one
PORT_SLICE = 2000
PORT_FLOOR = 20000


def free_base_port(count: int) -> int:
    """A port p such that p .. p+count-1 are free now, in this test worker's slice."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    low = PORT_FLOOR + (index % 6) * PORT_SLICE
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(low, low + PORT_SLICE - count)
        socks: list[socket.socket] = []
        try:
            for i in range(count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", base + i))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise RuntimeError(f"no {count} free ports in {low}-{low + PORT_SLICE}")


def run_cluster(
    sc: Scenario, processes: int, workers: int, timeout: float = 300, separate: bool = False, **env: str
) -> int:
    cmd = [
        sys.executable,
        "-m",
        "tools.run_local",
        "-p",
        str(processes),
        "-w",
        str(workers),
        "-r",
        str(sc.recovery),
        "-s",
        "1",
        "-b",
        "0",
        "--base-port",
        str(free_base_port(processes)),
    ]
    if separate:
        cmd.append("--separate-recovery")
    with open(sc.log, "ab") as out:
        return subprocess.run(
            cmd, cwd=ROOT, env={**sc.env(stop_at_end=True), **env}, stdout=out, stderr=out, timeout=timeout
        ).returncode


def outcomes(settings: Settings, sc: Scenario) -> dict[str, str]:
    """error.code (or "enriched") per input record, by its `trace-id` header (unique per
    record; records without a key land on a random partition, so offsets differ per run)."""
    out: dict[str, str] = {}
    for topic in (sc.topics.output, sc.topics.failure):
        for m in read_topic(settings, topic, timeout=120):
            out[header(m, "trace-id") or "?"] = header(m, "error.code") or "enriched"
    return out


def final_progress(sc: Scenario) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in sc.log.read_text().splitlines() if line.startswith("{")]
    return [doc for doc in lines if doc.get("msg") == "final progress"]


def check_complete(acc: Accounting, inputs: int) -> None:
    assert acc.inputs == inputs
    assert acc.lost == 0 and acc.duplicates == 0 and acc.distinct == inputs
    assert acc.history_missing == 0 and acc.history_rows == inputs


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, cql: Session) -> tuple[Accounting, dict[str, str]]:
    """1 process x 1 worker."""
    sc = Scenario(tmp_path_factory.mktemp("scale-1x1"), partitions=4)
    produce_all(sc.settings, sc.topics.input, sc.records(N, seed=SEED))
    assert run_cluster(sc, 1, 1) == 0, sc.log.read_text()[-3000:]
    acc = sc.account(cql)
    print(acc.report("1 x 1"))
    check_complete(acc, N)
    return acc, outcomes(sc.settings, sc)


@pytest.mark.parametrize(("processes", "workers"), [(2, 1), (1, 2)])
def test_same_accounting_as_one_worker(processes: int, workers: int, baseline, tmp_path: Path, cql: Session) -> None:
    base_acc, base_outcomes = baseline
    sc = Scenario(tmp_path, partitions=4)
    produce_all(sc.settings, sc.topics.input, sc.records(N, seed=SEED))
    assert run_cluster(sc, processes, workers) == 0, sc.log.read_text()[-3000:]
    acc = sc.account(cql)
    print(acc.report(f"{processes} x {workers}"))
    check_complete(acc, N)
    assert acc.codes == base_acc.codes
    assert outcomes(sc.settings, sc) == base_outcomes, "each record has the same outcome as with 1 x 1"
    assert len(base_outcomes) == N
    finals = final_progress(sc)
    assert len(finals) == processes, "one final progress line per process"
    assert sum(int(f["records_in"]) for f in finals) == N  # type: ignore[call-overload]
    assert all(int(f["records_in"]) > 0 for f in finals), "every process took part"  # type: ignore[call-overload]
    # the processes shared one recovery directory: each created its share, all are there
    assert sorted(p.name for p in sc.recovery.glob("part-*.sqlite3")) == [f"part-{k}.sqlite3" for k in range(4)]
    assert json.loads((sc.recovery / ".layout.json").read_text())["processes"] == processes


def test_rescale_resumes_from_shared_recovery(tmp_path: Path, cql: Session) -> None:
    """2 x 1 drains the input, then more arrives and 1 x 2 resumes from the same recovery
    directory: only the new records are processed."""
    sc = Scenario(tmp_path, partitions=4)
    produce_all(sc.settings, sc.topics.input, sc.records(N // 2, seed=SEED))
    assert run_cluster(sc, 2, 1) == 0, sc.log.read_text()[-3000:]
    produce_all(sc.settings, sc.topics.input, sc.records(N // 2, seed=SEED + 1))
    sc.log.write_text("")
    assert run_cluster(sc, 1, 2) == 0, sc.log.read_text()[-3000:]
    finals = final_progress(sc)
    assert [int(f["records_in"]) for f in finals] == [N // 2], "resumed after what 2 x 1 did"  # type: ignore[call-overload]
    acc = sc.account(cql)
    print(acc.report("2 x 1 then 1 x 2"))
    check_complete(acc, N)


def test_recovery_directory_per_process(tmp_path: Path, cql: Session) -> None:
    """As with a volume per pod: each process creates and keeps its share of the partitions;
    a restart of the same shape resumes; another number of processes is refused loudly."""
    sc = Scenario(tmp_path, partitions=4)
    produce_all(sc.settings, sc.topics.input, sc.records(N // 2, seed=SEED))
    assert run_cluster(sc, 2, 1, separate=True) == 0, sc.log.read_text()[-3000:]
    dirs = [sc.recovery / f"process-{i}" for i in range(2)]
    assert [sorted(p.name for p in d.glob("part-*.sqlite3")) for d in dirs] == [
        ["part-0.sqlite3", "part-2.sqlite3"],
        ["part-1.sqlite3", "part-3.sqlite3"],
    ]
    produce_all(sc.settings, sc.topics.input, sc.records(N // 2, seed=SEED + 1))
    sc.log.write_text("")
    assert run_cluster(sc, 2, 1, separate=True) == 0, sc.log.read_text()[-3000:]
    assert sum(int(f["records_in"]) for f in final_progress(sc)) == N // 2  # type: ignore[call-overload]
    acc = sc.account(cql)
    print(acc.report("2 x 1, a directory per process, twice"))
    check_complete(acc, N)
    sc.log.write_text("")
    # processes 0 and 1 refuse to start; process 2 waits for its peers until stopped
    assert run_cluster(sc, 3, 1, separate=True, SHUTDOWN_TIMEOUT_SECONDS="3") == 2
    assert "laid out for 2 processes, but this cluster has 3" in sc.log.read_text()


def _peak_threads(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, Counter[str]]:
    """The most threads the process had, sampled until it exits, and their names then."""
    peak, names = 0, Counter[str]()
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the dataflow did not finish"
        try:
            tasks = list(Path(f"/proc/{proc.pid}/task").iterdir())
            if len(tasks) > peak:
                peak, names = len(tasks), Counter(_comm(task) for task in tasks)
        except OSError:
            break
        time.sleep(0.05)
    return peak, names


def _comm(task: Path) -> str:
    try:
        return (task / "comm").read_text().strip()
    except OSError:
        return "?"


@pytest.mark.parametrize("overlap", ["true", "false"])
def test_many_partitions_one_consumer_per_worker_and_resume(overlap: str, tmp_path: Path, cql: Session) -> None:
    """A 64-partition input, read by 1 process x 2 workers: every record once, and the
    process runs about as many threads as with 4 partitions (one consumer per worker, not
    per partition: before, each partition had a consumer and its librdkafka threads).
    More records arrive and a second run resumes from the snapshots: only the new ones.
    With and without OVERLAP_ACKS (the snapshots are the delivered offsets either way)."""
    sc = Scenario(tmp_path, partitions=64, OVERLAP_ACKS=overlap)
    produce_all(sc.settings, sc.topics.input, sc.records(N // 2, seed=SEED))
    proc = sc.start(stop_at_end=True, BYTEWAX_WORKERS_PER_PROCESS="2")
    threads, names = _peak_threads(proc, 240)
    assert proc.wait(10) == 0, sc.log.read_text()[-3000:]
    # a worker's Kafka clients are its consumer, its offset committer and its producer, whatever
    # its partitions (each client runs ~4 librdkafka threads: with a consumer per partition,
    # over 250 threads); 2 workers: 6 clients, ~45 threads in all with Python's
    assert names["rdk:main"] <= 6, f"{names['rdk:main']} Kafka clients for 2 workers: {dict(names)}"
    assert 0 < threads < 64, f"{threads} threads for 64 partitions: {dict(names)}"
    produce_all(sc.settings, sc.topics.input, sc.records(N // 2, seed=SEED + 1))
    sc.log.write_text("")
    assert sc.run_to_end(BYTEWAX_WORKERS_PER_PROCESS="2") == 0, sc.log.read_text()[-3000:]
    finals = final_progress(sc)
    assert [int(f["records_in"]) for f in finals] == [N // 2], "resumed after the first run"  # type: ignore[call-overload]
    check_complete(sc.account(cql), N)
