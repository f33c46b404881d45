"""The process around the flow in the shapes users start it: exactly-once with a recovery
directory (as the StatefulSet and waxctl run it), a process of a cluster stopped while it
waits for its peers (Kubernetes' SIGTERM), and a peer that dies (one clear line, no PyO3
traceback). The fault matrix (test_matrix.py) runs these shapes under faults."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from cassandra.cluster import Session

from tools.kafkautil import produce_all

from .flowrun import ROOT, dataflow_cmd
from .resilience import Scenario
from .test_scale import free_base_port


def test_exactly_once_with_a_recovery_directory_reads_everything(tmp_path: Path, cql: Session) -> None:
    """Bytewax with a recovery directory ends a flow that keeps no snapshots at once (0 of
    the input read, exit 0): exactly-once runs without it and says so."""
    sc = Scenario(tmp_path, partitions=4, exactly_once=True)
    produce_all(sc.settings, sc.topics.input, sc.records(3000, seed=5))
    rc = subprocess.run(
        dataflow_cmd(),
        cwd=ROOT,
        env={
            **sc.env(stop_at_end=True),
            "BYTEWAX_RECOVERY_DIRECTORY": str(tmp_path / "rec"),
            "BYTEWAX_SNAPSHOT_INTERVAL": "5",
            "BYTEWAX_RECOVERY_BACKUP_INTERVAL": "0",
        },
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert rc.returncode == 0, rc.stderr[-3000:]
    assert "the recovery directory is not used" in rc.stderr
    acc = sc.account(cql)
    assert acc.inputs == 3000 and acc.lost == 0 and acc.duplicates == 0 and acc.history_missing == 0
    assert sc.lag() == 0


def test_a_process_waiting_for_its_peers_stops_on_sigterm(tmp_path: Path) -> None:
    """Process 0 of two, its peer never started: it waits in Bytewax's Rust code, where
    Python's handlers don't run. SIGTERM still ends it at once, status 0."""
    base = free_base_port(2)
    log = tmp_path / "p0.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            dataflow_cmd("-i", "0", "-a", f"127.0.0.1:{base};127.0.0.1:{base + 1}"),
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
        time.sleep(4)
        assert proc.poll() is None, log.read_text()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
    took = time.monotonic() - started
    text = log.read_text()
    assert rc == 0, text
    assert took < 5, f"{took:.1f}s to stop"
    assert "SIGTERM received before the flow started" in text


def test_a_peer_gone_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    sc = Scenario(tmp_path, partitions=4)
    produce_all(sc.settings, sc.topics.input, sc.records(2000, seed=6))
    base = free_base_port(2)
    addresses = f"127.0.0.1:{base};127.0.0.1:{base + 1}"
    logs = [tmp_path / "p0.log", tmp_path / "p1.log"]
    procs = []
    for i in range(2):
        with open(logs[i], "wb") as out:
            args = ("-i", str(i), "-a", addresses, "-r", str(tmp_path / "rec"), "-s", "1", "-b", "0")
            procs.append(
                subprocess.Popen(dataflow_cmd(*args), cwd=ROOT, env=sc.env(stop_at_end=False), stdout=out, stderr=out)
            )
    try:
        deadline = time.monotonic() + 90
        while sc.output_count() < 2000:
            assert time.monotonic() < deadline, logs[0].read_text()[-3000:]
            time.sleep(0.5)
        procs[1].kill()
        rc = procs[0].wait(60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    text = logs[0].read_text()
    assert rc == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    lines = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    gone = [x for x in lines if x["level"] == "ERROR" and x["msg"].startswith("the Bytewax cluster stopped")]
    assert len(gone) == 1, text[-3000:]
