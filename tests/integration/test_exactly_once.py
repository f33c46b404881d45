"""Exactly-once mode on the real servers: each input record appears exactly once in the
outputs as a `read_committed` consumer sees them, with its history row, across SIGKILL at
random moments and inside a commit, a broker restart, a zombie member and rescaling; and
the group's committed offsets show the lag, reaching 0 at the end.

Each test prints its figures; run with `-s` to see them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cassandra.cluster import Session

from tools.kafkautil import produce_all

from .flowrun import ROOT
from .resilience import Accounting, Scenario, SteadyProducer, crash_loop, sigterm, stack

N_CRASH = int(os.environ.get("RESILIENCE_RECORDS", "40000"))
CRASH_RATE = max(1000.0, N_CRASH / 40)


def exactly_once(sc: Scenario, acc: Accounting) -> None:
    """Every input record once in the committed outputs, with its history row, and the
    failures the feed asked for."""
    assert acc.lost == 0 and acc.distinct == acc.inputs, acc.report("lost")
    assert acc.duplicates == 0, acc.report("duplicated")
    assert acc.outputs == acc.inputs
    assert acc.history_missing == 0
    assert acc.codes == {k: v for k, v in sc.expected.items() if k != "enriched"}


@pytest.mark.resilience  # the fault matrix runs the same in make test
def test_crash_loop_exactly_once(tmp_path: Path, cql: Session) -> None:
    sc = Scenario(tmp_path, partitions=4, exactly_once=True)
    acc = crash_loop(sc, cql, N_CRASH, CRASH_RATE, seed=7, pause=(1.0, 3.0), label="exactly-once crash loop")
    exactly_once(sc, acc)
    assert sc.lag() == 0, sc.group_offsets()


# Loaded by every Python process started with this directory first on PYTHONPATH: SIGKILLs
# the dataflow at the chosen moment of its KILL_AT_COMMIT-th transaction commit.
KILLER = """
import os, signal
from flows.adapters.kafka import transactions

_call = transactions.Transactions._call
_seen = [0]
_at = int(os.environ["KILL_AT_COMMIT"])
_moment = os.environ["KILL_MOMENT"]

def _killing_call(self, what, fn):
    if what == "commit_transaction":
        _seen[0] += 1
        if _seen[0] == _at and _moment == "offsets-sent":
            os.kill(os.getpid(), signal.SIGKILL)  # offsets sent with the transaction, commit not asked
    _call(self, what, fn)
    if what == "commit_transaction" and _seen[0] == _at and _moment == "committed":
        os.kill(os.getpid(), signal.SIGKILL)  # committed at the broker, not yet recorded here

transactions.Transactions._call = _killing_call
"""


@pytest.mark.parametrize("moment", ["offsets-sent", "committed"])
def test_sigkill_inside_a_commit(moment: str, tmp_path: Path, cql: Session) -> None:
    sc = Scenario(tmp_path, partitions=4, exactly_once=True)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(KILLER))
    records = sc.records(8000, seed=hash(moment) % 1000)
    produce_all(sc.settings, sc.topics.input, records)
    proc = sc.start(
        stop_at_end=True,
        PYTHONPATH=f"{hook}{os.pathsep}{ROOT}",
        KILL_AT_COMMIT="5",
        KILL_MOMENT=moment,
        COMMIT_INTERVAL_MS="20",
        SOURCE_BATCH_SIZE="200",
    )
    rc = proc.wait(120)
    assert rc == -signal.SIGKILL, f"the hook did not kill the run (exit {rc}):\n{sc.log.read_text()[-3000:]}"
    killed_at = sc.lag()
    assert 0 < killed_at < len(records), f"killed mid-stream, lag {killed_at}"
    assert sc.run_to_end() == 0, sc.log.read_text()[-3000:]
    acc = sc.account(cql)
    print(acc.report(f"SIGKILL inside commit 5 ({moment}), lag then {killed_at}"))
    exactly_once(sc, acc)


@pytest.mark.resilience  # the fault matrix runs the same in make test
@pytest.mark.outage
def test_broker_restart_mid_stream(tmp_path: Path, cql: Session) -> None:
    sc = Scenario(tmp_path, partitions=4, exactly_once=True, RETRY_DEADLINE_SECONDS="120")
    records = sc.records(10000, seed=31)
    proc = sc.start(stop_at_end=False)
    feeder = SteadyProducer(sc, records, 400)
    try:
        feeder.start()
        time.sleep(5)
        stack("down", "kafka")
        time.sleep(10)
        assert proc.poll() is None, f"the dataflow died while the broker was down:\n{sc.log.read_text()[-3000:]}"
        stack("up", "kafka")
        feeder.join(240)
        assert feeder.error is None, feeder.error
        sc.wait_for_lag_zero(timeout=180)
        rc, _ = sigterm(proc, timeout=90)
    finally:
        stack("up", "kafka")
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, sc.log.read_text()[-3000:]
    acc = sc.account(cql)
    print(acc.report("exactly-once, broker down 10 s"))
    exactly_once(sc, acc)


@pytest.mark.resilience  # the fault matrix runs the same in make test
def test_a_zombie_can_not_commit(tmp_path: Path, cql: Session) -> None:
    """A member frozen past its session timeout (SIGSTOP) loses its partitions to a second
    process; thawed, it still holds an open transaction and records it read: nothing of it
    may become visible."""
    sc = Scenario(tmp_path, partitions=4, exactly_once=True, KAFKA_SESSION_TIMEOUT_MS="6000")
    records = sc.records(12000, seed=41)
    feeder = SteadyProducer(sc, records, 500)
    zombie_log, heir_log = tmp_path / "zombie.log", tmp_path / "heir.log"
    # different transactional ids: only the group (KIP-447) can fence the zombie, not its producer id
    zombie = sc.start(stop_at_end=False, log=zombie_log, TRANSACTIONAL_ID_PREFIX="zombie")
    heir: subprocess.Popen[bytes] | None = None
    feeder.start()
    try:
        sc.wait_for_outputs(500, timeout=60)
        zombie.send_signal(signal.SIGSTOP)
        heir = sc.start(stop_at_end=False, log=heir_log, TRANSACTIONAL_ID_PREFIX="heir")
        deadline = time.monotonic() + 60
        while "partitions assigned" not in heir_log.read_text() or '"partitions":[0,1,2,3]' not in heir_log.read_text():
            assert time.monotonic() < deadline, heir_log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(3)  # the heir processes what the zombie had read
        zombie.send_signal(signal.SIGCONT)
        feeder.join(240)
        assert feeder.error is None, feeder.error
        sc.wait_for_lag_zero(timeout=180)
        time.sleep(2)
    finally:
        for proc in (zombie, heir):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                sigterm(proc, timeout=90)
    acc = sc.account(cql)
    zlog = zombie_log.read_text()
    print(acc.report("zombie"))
    print("[zombie] " + " | ".join(line for line in zlog.splitlines() if "partitions" in line or "transaction" in line))
    exactly_once(sc, acc)
    assert "partitions lost" in zlog or "transaction refused" in zlog or "fenced" in zlog, zlog[-3000:]


def test_rescaling_moves_partitions_without_loss_or_duplicates(tmp_path: Path, cql: Session) -> None:
    """A second process joins mid-stream, then the first stops: Kafka moves the partitions
    (no restart of anything), and every record is still output exactly once."""
    sc = Scenario(tmp_path, partitions=4, exactly_once=True)
    records = sc.records(16000, seed=51)
    feeder = SteadyProducer(sc, records, 800)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = sc.start(stop_at_end=False, log=first_log, TRANSACTIONAL_ID_PREFIX="first")
    second: subprocess.Popen[bytes] | None = None
    feeder.start()
    try:
        sc.wait_for_outputs(1000, timeout=60)
        second = sc.start(stop_at_end=False, log=second_log, TRANSACTIONAL_ID_PREFIX="second")
        deadline = time.monotonic() + 120  # it joins the group (a slow start under load included)
        while "partitions assigned" not in second_log.read_text():
            assert time.monotonic() < deadline and second.poll() is None, second_log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(3)  # both process for a while
        rc_first, _ = sigterm(first, timeout=60)
        feeder.join(240)
        assert feeder.error is None, feeder.error
        sc.wait_for_lag_zero(timeout=180)
        rc_second, _ = sigterm(second, timeout=60)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert rc_first == 0 and rc_second == 0
    slog = second_log.read_text()
    assigned = [line for line in slog.splitlines() if "partitions assigned" in line]
    print("[rescale] second process: " + " | ".join(assigned))
    assert len(assigned) >= 2, "the second process got partitions when it joined and more when the first left"
    acc = sc.account(cql)
    print(acc.report("rescale 1 -> 2 -> 1 process"))
    exactly_once(sc, acc)


@pytest.mark.parametrize("args", [("-w", "2")], ids=["2-workers"])
def test_workers_of_one_process_share_the_group(args: tuple[str, ...], tmp_path: Path, cql: Session) -> None:
    sc = Scenario(tmp_path, partitions=4, exactly_once=True)
    records = sc.records(6000, seed=61)
    produce_all(sc.settings, sc.topics.input, records)
    res = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflow", *args],
        cwd=ROOT,
        env=sc.env(stop_at_end=True),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    acc = sc.account(cql)
    print(acc.report("exactly-once -w 2"))
    exactly_once(sc, acc)
    assert sc.lag() == 0


def test_a_batch_run_commits_and_ends_when_the_input_is_drained(tmp_path: Path, cql: Session) -> None:
    """STOP_AT_END with two workers and a commit interval (the longest allowed, 60 s) far
    longer than the run: each
    worker commits as soon as its partitions are drained, and ends once the others' are
    committed too. (A worker that ended with its transaction open left the other waiting
    for offsets committed only when the whole flow ends: the run hung until Kafka threw the
    idle consumer out, five minutes later, and its heir read part of the input again.)"""
    sc = Scenario(tmp_path, partitions=4, exactly_once=True)
    produce_all(sc.settings, sc.topics.input, sc.records(4000, seed=67))
    res = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflow", "-w", "2"],
        cwd=ROOT,
        env={**sc.env(stop_at_end=True), "COMMIT_INTERVAL_MS": "60000", "TRANSACTION_TIMEOUT_MS": "180000"},
        capture_output=True,
        text=True,
        timeout=55,  # the run takes seconds; waiting for the interval (or hanging) exceeds this
    )
    assert res.returncode == 0, res.stderr[-3000:]
    acc = sc.account(cql)
    print(acc.report("exactly-once -w 2, drained before the commit interval"))
    exactly_once(sc, acc)
    assert sc.lag() == 0, sc.group_offsets()
