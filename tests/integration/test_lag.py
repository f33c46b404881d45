"""The flow's progress in CONSUMER_GROUP, in both modes, as operators see it: Kafka's own
kafka-consumer-groups tool (from the broker's jars: `make lag`) lists every input partition
with its committed offset and lag during a run, `/metrics` exports the lag per partition,
and both reach 0 when the input is done.

Run with `-s` to see the tool's output during the run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from .flowrun import ROOT
from .resilience import Scenario, SteadyProducer, sigterm
from .test_metrics import free_port, scrape

RATE = 2000
N = 16000


def describe(group: str) -> dict[int, tuple[str, str, str]]:
    """`kafka-consumer-groups --describe --group`: partition -> (current offset, log end, lag)."""
    res = subprocess.run(
        [sys.executable, str(ROOT / "stack" / "stack.py"), "groups", "--describe", "--group", group],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    rows: dict[int, tuple[str, str, str]] = {}
    for line in res.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[0] == group:
            rows[int(cols[2])] = (cols[3], cols[4], cols[5])
    print(f"[lag] {group}:\n{res.stdout.strip()}")
    return rows


def lag_gauges(port: int) -> dict[int, float]:
    return {
        int(name.split('partition="')[1].split('"')[0]): value
        for name, value in scrape(port).items()
        if name.startswith("enrichment_consumer_lag{")
    }


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_group_lag_is_visible_during_a_run_and_reaches_zero(exactly_once: bool, tmp_path: Path) -> None:
    port = free_port()
    sc = Scenario(
        tmp_path,
        partitions=4,
        exactly_once=exactly_once,
        BYTEWAX_DATAFLOW_API_ENABLED="true",
        BYTEWAX_DATAFLOW_API_PORT=str(port),
        BYTEWAX_DATAFLOW_API_CACHE_PATH=str(tmp_path),
    )
    records = sc.records(N, seed=71)
    feeder = SteadyProducer(sc, records, RATE)
    proc = sc.start(stop_at_end=False)
    during: list[dict[int, tuple[str, str, str]]] = []
    gauges: list[dict[int, float]] = []
    try:
        feeder.start()
        sc.wait_for_outputs(1, timeout=60)
        while feeder.is_alive():
            during.append(describe(sc.group))
            gauges.append(lag_gauges(port))
        assert feeder.error is None, feeder.error
        sc.wait_for_lag_zero(timeout=120)
        time.sleep(1.5)  # the lag gauge follows the next commit
        end, end_gauges = describe(sc.group), lag_gauges(port)
        rc, _ = sigterm(proc, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, sc.log.read_text()[-3000:]
    # during the run: every partition listed with a committed offset, while records kept coming
    assert during and all(set(rows) == {0, 1, 2, 3} for rows in during[1:]), during
    assert any(all(cur.isdigit() for cur, _, _ in rows.values()) for rows in during)
    assert any(gauge for gauge in gauges), "the lag gauge appeared on /metrics during the run"
    # at the end: nothing left, in Kafka's tool and on /metrics
    assert {p: lag for p, (_, _, lag) in end.items()} == {p: "0" for p in range(4)}
    assert end_gauges == {p: 0 for p in range(4)}
    seen = max((int(lag) for rows in during for _, _, lag in rows.values() if lag.isdigit()), default=0)
    print(f"[lag] {'exactly' if exactly_once else 'at-least'}-once: largest partition lag seen {seen}")


def test_a_run_resumed_at_the_end_commits_the_snapshot_positions(tmp_path: Path) -> None:
    """At-least-once with a recovery directory: a run whose snapshots say every partition is
    done (its predecessor was killed after its last snapshot, before its last group commit)
    reads nothing, and commits those positions, so the lag reaches 0 instead of showing the
    old commits forever."""
    from confluent_kafka import Consumer, TopicPartition

    from flows import connections
    from tools.kafkautil import produce_all

    sc = Scenario(tmp_path, partitions=4, exactly_once=False)
    produce_all(sc.settings, sc.topics.input, sc.records(2000, seed=73))
    assert sc.run_to_end() == 0, sc.log.read_text()[-3000:]
    assert sc.lag() == 0
    # the killed predecessor's last group commit: behind the snapshots
    rewound = Consumer({**connections.kafka_common(sc.settings), "group.id": sc.group, "enable.auto.commit": False})
    rewound.commit(offsets=[TopicPartition(sc.topics.input, p, 0) for p in range(4)], asynchronous=False)
    rewound.close()
    assert sc.lag() == 2000
    assert sc.run_to_end() == 0, sc.log.read_text()[-3000:]
    assert sc.lag() == 0, sc.group_offsets()
    assert "initialized recovery partitions" in sc.log.read_text()
