"""`ops replay` run by several operators at once, killed, or cut off: the state they share
in the history keyspace, and its lease, keep every dead letter produced exactly once.

The runs are subprocesses started from different working directories (as two operators
on two machines would: nothing local is shared), against a failure topic filled with
synthetic dead letters, enough that a run takes a few seconds in small chunks. Also here:
what a replay does with records its target refuses, and with a keyspace that is not there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cassandra.cluster import Session
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from flows.settings import Settings
from ops import scan
from ops.errors import OpsError
from ops.replay_state import ReplayState
from ops.replay_store import LEASE_S, StateKey, Store
from tools import provision as flows_admin
from tools.kafkautil import header, produce_all, read_topic

from .flowrun import ROOT, Topics

N_DEAD = 240
CHUNK = "4"


@pytest.fixture(scope="module")
def topics(admin: AdminClient) -> Iterator[Topics]:
    """A failure topic holding N_DEAD dead letters (as the dataflow writes them)."""
    topics = Topics(prefix="itlease", partitions=3).create()
    settings = topics.settings
    dead = [
        (
            f"k{i}".encode(),
            f'{{"n":{i}}}'.encode(),
            [
                ("trace-id", f"t-{i}".encode()),
                ("error.code", b"invalid_json"),
                ("error.stage", b"decode"),
                ("source.topic", topics.input.encode()),
                ("source.partition", b"0"),
                ("source.offset", str(i).encode()),
            ],
        )
        for i in range(N_DEAD)
    ]
    produce_all(settings, topics.failure, dead)
    yield topics
    base = topics.input.split(".")[0]
    extra = [t for t in admin.list_topics(timeout=10).topics if t.startswith(base)]
    for fut in admin.delete_topics(extra, operation_timeout=30).values():
        fut.result(timeout=60)


def _env(topics: Topics) -> dict[str, str]:
    return {**os.environ, **topics.env, "PYTHONPATH": str(ROOT)}


def start_replay(topics: Topics, target: str, cwd: Path, chunk: str = CHUNK) -> subprocess.Popen[str]:
    cwd.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "ops", "replay", "--to", target, "--chunk-size", chunk, "-q"],
        cwd=cwd,
        env=_env(topics),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_replay(topics: Topics, target: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "ops", "replay", "--to", target, "--chunk-size", CHUNK, "-q"],
        cwd=cwd,
        env=_env(topics),
        capture_output=True,
        text=True,
        timeout=300,
    )


def replay_refs(settings: Settings, target: str) -> Counter[str]:
    """How many times each dead letter reached the target, by its `replay.of` header."""
    return Counter(header(m, "replay.of") for m in read_topic(settings, target))


def records_in(settings: Settings, topic: str) -> int:
    """How many records `topic` holds now (0 while a new topic has no leader yet)."""
    consumer = scan.open_consumer(settings)
    try:
        parts = scan.partitions(consumer, topic, 10)
        return sum(hi - lo for lo, hi in scan.watermarks(consumer, topic, parts, 10).values())
    except KafkaException:
        return 0
    finally:
        consumer.close()


def every_dead_letter_once(topics: Topics) -> Counter[str]:
    failed = read_topic(topics.settings, topics.failure)
    return Counter({f"{topics.failure}:{m.partition()}:{m.offset()}": 1 for m in failed})


def new_target(topics: Topics, name: str) -> str:
    target = f"{topics.input}.{name}"
    flows_admin.ensure_topics(topics.settings, [target], 3)
    return target


def assert_refused_by_lease(done: subprocess.CompletedProcess[str] | tuple[int, str], pid: int) -> None:
    code, stderr = (done.returncode, done.stderr) if isinstance(done, subprocess.CompletedProcess) else done
    assert code == 2, stderr
    assert stderr.startswith("ops replay: error: another replay holds the state of "), stderr
    assert f"host {socket.gethostname()}, pid {pid}, since " in stderr
    assert stderr.count("\n") == 1


def test_two_concurrent_replays_from_two_directories_produce_each_dead_letter_once(
    topics: Topics, tmp_path: Path
) -> None:
    target = new_target(topics, "concurrent")
    first = start_replay(topics, target, tmp_path / "alice")
    second = start_replay(topics, target, tmp_path / "bob")
    results = {}
    for proc in (first, second):
        out, err = proc.communicate(timeout=300)
        results[proc.pid] = (proc.returncode, out, err)
    codes = sorted(code for code, _, _ in results.values())
    assert codes in ([0, 0], [0, 2]), results
    for pid, (code, _out, err) in results.items():
        if code == 2:  # refused while the other held the lease: it names the other
            other = next(p for p in results if p != pid)
            assert_refused_by_lease((code, err), other)
    # whoever ran, every dead letter is in the target once; a run now has nothing left to do
    assert replay_refs(topics.settings, target) == every_dead_letter_once(topics)
    last = run_replay(topics, target, tmp_path / "carol")
    assert last.returncode == 0, last.stderr
    assert "replayed 0 records" in last.stdout and f"skipped, replayed by an earlier run: {N_DEAD}" in last.stdout
    assert replay_refs(topics.settings, target) == every_dead_letter_once(topics)


def test_a_killed_replay_holds_its_lease_until_it_expires_then_a_rerun_completes_it(
    topics: Topics, tmp_path: Path
) -> None:
    """SIGKILL mid-run: a rerun from another directory is refused while the dead run's
    lease lasts (naming it), then settles its chunk in flight and produces the rest:
    nothing twice, nothing missing."""
    target = new_target(topics, "killed")
    # chunks of one: the run takes long enough to be killed part-way on a fast machine
    victim = start_replay(topics, target, tmp_path / "alice", chunk="1")
    deadline = time.monotonic() + 120
    while records_in(topics.settings, target) < 20:
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline, "the replay produced nothing"
        time.sleep(0.2)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    killed_at = time.monotonic()
    produced = sum(replay_refs(topics.settings, target).values())
    assert 20 <= produced < N_DEAD  # stopped part-way

    refused = run_replay(topics, target, tmp_path / "bob")
    assert_refused_by_lease(refused, victim.pid)

    while True:  # the lease lapses at most LEASE_S after the dead run's last renewal
        time.sleep(5)
        done = run_replay(topics, target, tmp_path / "bob")
        if done.returncode != 2:
            break
        assert_refused_by_lease(done, victim.pid)
        assert time.monotonic() - killed_at < LEASE_S + 30, "the dead run's lease did not expire"
    assert done.returncode == 0, done.stdout + done.stderr
    assert replay_refs(topics.settings, target) == every_dead_letter_once(topics)


def test_a_run_that_lost_its_lease_can_not_write_the_state(topics: Topics, cql: Session) -> None:
    """Another run took the row over (as after this run's lease lapsed): this run's next
    state write is refused and the state stays as the other run left it; the next chunk
    is refused before it is produced."""
    key = StateKey(f"cluster-{uuid.uuid4().hex[:8]}", topics.failure, f"{topics.input}.fenced")
    store = Store(topics.settings)
    try:
        with store.take(key) as lease:
            state = ReplayState(key.cluster, key.failure_topic, "topic-id", key.target_topic)
            state.save = lambda s: lease.write(s.dumps())
            state.begin([(0, 1)], int(time.time() * 1000))
            state.commit()
            table = f"{topics.settings.scylla_keyspace}.replay_state"
            taken = cql.execute(
                f"UPDATE {table} SET owner = 'elsewhere:1:x' WHERE cluster_id = %s AND "
                "failure_topic = %s AND target_topic = %s IF owner = %s",
                (*key.params(), lease.owner),
            )
            assert taken.was_applied
            before = store.read(key).state

            with pytest.raises(OpsError, match="no longer holds its lease") as exc:
                state.begin([(0, 2)], int(time.time() * 1000))
            assert exc.value.status == 3
            assert store.read(key).state == before
            with pytest.raises(OpsError, match="lost its lease"):
                lease.ensure()
        assert store.read(key).holder is not None  # not given back: it is not this run's
    finally:
        store.close()


def test_a_keyspace_that_does_not_exist_is_refused_not_created(topics: Topics, tmp_path: Path, cql: Session) -> None:
    """A mistyped SCYLLA_KEYSPACE would start from an empty state of its own and replay
    everything again: refused before anything is produced."""
    target = new_target(topics, "nokeyspace")
    keyspace = f"nope_{uuid.uuid4().hex[:10]}"
    done = subprocess.run(
        [sys.executable, "-m", "ops", "replay", "--to", target],
        cwd=tmp_path,
        env={**_env(topics), "SCYLLA_KEYSPACE": keyspace},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(f"ops replay: error: keyspace {keyspace} does not exist on ")
    assert done.stderr.count("\n") == 1
    assert records_in(topics.settings, target) == 0
    assert (
        cql.execute("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s", (keyspace,)).one()
        is None
    )


def test_records_the_target_refuses_are_reported_and_not_recorded_as_replayed(
    topics: Topics, tmp_path: Path, admin: AdminClient
) -> None:
    """A dead letter too large for the target: the others are replayed (once), it is
    listed, not recorded as replayed, and the run exits 3; a rerun produces nothing twice."""
    failure = f"{topics.input}.failed-sizes"
    target = f"{topics.input}.small"
    flows_admin.ensure_topics(topics.settings, [failure], 1)
    for fut in admin.create_topics([NewTopic(target, 1, 1, config={"max.message.bytes": "2000"})]).values():
        fut.result(timeout=30)
    dead = [
        (b"s1", b"small", [("error.code", b"invalid_json")]),
        (b"big", b"x" * 5000, [("error.code", b"invalid_json")]),
        (b"s2", b"small", [("error.code", b"invalid_json")]),
    ]
    produce_all(topics.settings, failure, dead)
    env = {**_env(topics), "FAILURE_TOPIC": failure}
    for attempt in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "ops", "replay", "--to", target, "-q"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 3, done.stdout + done.stderr
        assert f"replayed {2 if attempt == 0 else 0} records" in done.stdout
        assert f"refused by {target}, not replayed: 1 (partition 0: 1)" in done.stdout
        assert (
            done.stderr == f"ops replay: {target} refused 1 record (too large for it, or invalid there); they "
            "are not recorded as replayed: see the report\n"
        )
    assert replay_refs(topics.settings, target) == Counter({f"{failure}:0:0": 1, f"{failure}:0:2": 1})
