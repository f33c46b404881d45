"""Nothing lost: crashes, dependency outages and shutdown, on the real servers.

Each test prints its figures (records, duplicates, lost); run with `-s` to see them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from cassandra.cluster import Session

from tools.kafkautil import produce_all

from .resilience import Scenario, SteadyProducer, crash_loop, sigterm, stack

RATE = 400  # records/s fed during outages
OUTAGE_S = 10
N_CRASH = int(os.environ.get("RESILIENCE_RECORDS", "40000"))
# the feed lasts about 40 s, longer than the three killed runs even on a busy machine (each
# run starts, checks its dependencies and writes for 1.5-3 s before it is killed)
CRASH_RATE = max(1000.0, N_CRASH / 40)


@pytest.mark.resilience  # the fault matrix runs the same in make test
def test_crash_loop_loses_nothing(tmp_path: Path, cql: Session) -> None:
    sc = Scenario(tmp_path, partitions=4)
    # each kill 1.5-3 s into the run's output: past at least one snapshot (every second),
    # so restarts really resume from recovery state
    acc = crash_loop(sc, cql, N_CRASH, CRASH_RATE, seed=11, pause=(1.5, 3.0), label="crash loop")
    assert acc.lost == 0 and acc.distinct == acc.inputs
    assert acc.history_missing == 0
    assert acc.codes == {k: v for k, v in sc.expected.items() if k != "enriched"}


@pytest.mark.resilience  # the fault matrix runs the same in make test
@pytest.mark.outage
@pytest.mark.parametrize("server", ["postgres", "cassandra", "kafka"])
def test_dependency_outage_loses_nothing_and_dead_letters_nothing(server: str, tmp_path: Path, cql: Session) -> None:
    sc = Scenario(tmp_path, partitions=4, RETRY_DEADLINE_SECONDS="120")
    records = sc.records(RATE * 25, seed=hash(server) % 1000)
    proc = sc.start(stop_at_end=False)
    feeder = SteadyProducer(sc, records, RATE)
    try:
        feeder.start()
        time.sleep(5)
        stack("down", server)
        time.sleep(OUTAGE_S)
        assert proc.poll() is None, f"the dataflow died during the {server} outage:\n{sc.log.read_text()[-3000:]}"
        stack("up", server)
        feeder.join(240)
        assert feeder.error is None, feeder.error
        sc.wait_for_outputs(len(records), timeout=180)
        rc, took = sigterm(proc, timeout=90)
    finally:
        stack("up", server)
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, sc.log.read_text()[-3000:]
    acc = sc.account(cql)
    print(acc.report(f"{server} outage {OUTAGE_S}s") + f" shutdown_s={took:.1f}")
    assert acc.lost == 0 and acc.history_missing == 0
    # the outage dead-lettered nothing: the failure topic holds only the bad records fed in
    assert acc.codes == {k: v for k, v in sc.expected.items() if k != "enriched"}
    log = sc.log.read_text()
    assert "retrying" in log or server == "kafka", "the outage was noticed and ridden out"


def test_sigterm_exits_0_and_restart_continues_without_loss(tmp_path: Path, cql: Session) -> None:
    sc = Scenario(tmp_path, partitions=4, SHUTDOWN_TIMEOUT_SECONDS="30")
    records = sc.records(20000, seed=23)
    feeder = SteadyProducer(sc, records, 4000)
    proc = sc.start(stop_at_end=False)
    feeder.start()
    sc.wait_for_outputs(1, timeout=60)
    time.sleep(2)
    rc, took = sigterm(proc, timeout=60)
    first = sc.output_count()
    feeder.join(120)
    assert feeder.error is None, feeder.error
    assert rc == 0, sc.log.read_text()[-3000:]
    assert took < 30
    assert 0 < first < 20000, "SIGTERM arrived mid-stream"
    assert sc.run_to_end() == 0
    acc = sc.account(cql)
    print(acc.report("SIGTERM") + f" shutdown_s={took:.2f} before_restart={first}")
    assert acc.lost == 0 and acc.history_missing == 0
    # graceful shutdown snapshots after the last acknowledged batch: nothing is redone
    assert acc.duplicates == 0


@pytest.mark.outage
def test_dependency_down_past_the_deadline_exits_3_then_resumes(tmp_path: Path, cql: Session) -> None:
    import json
    import random as rnd

    from tools import sample

    sc = Scenario(tmp_path, partitions=2, RETRY_DEADLINE_SECONDS="5", STARTUP_TIMEOUT_SECONDS="2")
    first = list(sample.events(500, 100, bad_ratio=0, seed=1))  # customers 0..99, then cached
    rng = rnd.Random(2)
    later = [
        (None, json.dumps(sample.good_event(rng, 10_000 + i, sample.customer_id(1000 + i))).encode(), [])
        for i in range(300)
    ]  # customers never seen: each needs PostgreSQL
    produce_all(sc.settings, sc.topics.input, first)
    proc = sc.start(stop_at_end=False)
    try:
        sc.wait_for_outputs(500, timeout=60)
        stack("down", "postgres")
        produce_all(sc.settings, sc.topics.input, later)
        rc = proc.wait(90)
    finally:
        stack("up", "postgres")
        if proc.poll() is None:
            proc.kill()
    log = sc.log.read_text()
    errors = [line for line in log.splitlines() if '"level":"ERROR"' in line]
    print(f"[deadline] exit={rc} error_lines={len(errors)}")
    assert rc == 3, log[-3000:]
    assert len(errors) == 1 and "dependency unavailable, exiting for a restart: postgresql" in errors[0]
    assert sc.run_to_end() == 0, sc.log.read_text()[-3000:]
    acc = sc.account(cql)
    print(acc.report("deadline exit then resume"))
    assert acc.inputs == 800 and acc.lost == 0 and acc.history_missing == 0
    assert acc.codes == {}, "the outage dead-lettered nothing"
