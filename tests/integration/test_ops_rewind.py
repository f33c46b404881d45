"""`python -m ops rewind` on the real servers: the day after a bug fix, the input is read
again from an offset or a time, in both guarantees (the consumer group and, at-least-once,
the recovery store); a dry run changes nothing; a running flow is never rewound under it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from cassandra.cluster import Session

from tools.kafkautil import header, produce_all, read_topic

from .flowrun import ROOT
from .resilience import Scenario


def ops(sc: Scenario, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops", "rewind", *args],
        cwd=ROOT,
        env=sc.env(stop_at_end=True),
        capture_output=True,
        text=True,
        timeout=120,
    )


def times_output(sc: Scenario) -> Counter[tuple[int, int]]:
    """How many messages each input record has in the outputs (read as the mode's readers do)."""
    seen: Counter[tuple[int, int]] = Counter()
    for topic in (sc.topics.output, sc.topics.failure):
        for m in read_topic(sc.settings, topic, 120, sc.exactly_once):
            seen[(int(header(m, "source.partition") or -1), int(header(m, "source.offset") or -1))] += 1
    return seen


def test_at_least_once_reads_again_from_an_offset_snapshots_and_group_alike(tmp_path: Path, cql: Session) -> None:
    sc = Scenario(tmp_path, partitions=2)
    produce_all(sc.settings, sc.topics.input, sc.records(1000, seed=3))
    assert sc.run_to_end() == 0, sc.log.read_text()[-3000:]
    ends = sc.group_offsets()
    assert all(done == high for done, high in ends.values())

    dry = ops(sc, "--to-offset", "100", "--to-offset", "1:300", "--recovery-directory", str(sc.recovery), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout and "total read again" in dry.stdout
    assert sc.group_offsets() == ends, "a dry run changes nothing"

    done = ops(sc, "--to-offset", "100", "--to-offset", "1:300", "--recovery-directory", str(sc.recovery))
    assert done.returncode == 0, done.stderr
    assert "snapshot row(s)" in done.stdout
    assert {p: c for p, (c, _) in sc.group_offsets().items()} == {0: 100, 1: 300}

    assert sc.run_to_end() == 0, sc.log.read_text()[-3000:]
    seen = times_output(sc)
    again = {at for at, n in seen.items() if n == 2}
    expected = {(0, o) for o in range(100, ends[0][1])} | {(1, o) for o in range(300, ends[1][1])}
    assert again == expected, "exactly the records after the new offsets were processed again"
    assert all(n in (1, 2) for n in seen.values()) and len(seen) == 1000


def test_exactly_once_reads_again_from_a_time(tmp_path: Path, cql: Session) -> None:
    sc = Scenario(tmp_path, partitions=2, exactly_once=True)
    first, later = sc.records(600, seed=4)[:300], sc.records(600, seed=4)[300:]
    produce_all(sc.settings, sc.topics.input, first)
    time.sleep(1.5)
    moment = time.time()
    time.sleep(1.5)
    produce_all(sc.settings, sc.topics.input, later)
    assert sc.run_to_end() == 0, sc.log.read_text()[-3000:]
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1000):03d}Z"
    done = ops(sc, "--to-datetime", when)
    assert done.returncode == 0, done.stderr
    assert sc.run_to_end() == 0, sc.log.read_text()[-3000:]
    counts = Counter(times_output(sc).values())
    assert counts == {1: 300, 2: 300}, "the records after the time, and only they, came out again"


def test_a_running_flow_is_not_rewound(tmp_path: Path) -> None:
    for exactly_once in (False, True):
        sc = Scenario(tmp_path / str(exactly_once), partitions=2, exactly_once=exactly_once)
        produce_all(sc.settings, sc.topics.input, sc.records(200, seed=5))
        proc = sc.start(stop_at_end=False)
        try:
            sc.wait_for_outputs(200, timeout=90)
            args = ["--to-earliest"] + ([] if exactly_once else ["--recovery-directory", str(sc.recovery)])
            refused = ops(sc, *args)
        finally:
            proc.terminate()
            proc.wait(90)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert ("member(s)" if exactly_once else "is running with recovery directory") in refused.stderr
