"""The operator tools (`python -m ops`) against the real stack and a real dataflow run.

One module-wide scenario: fresh topics, a mix of good records, bad records and records of a
customer that PostgreSQL does not have yet, one run of the dataflow (with a recovery
directory, so a second run only processes what was added). The tools run as users run them,
as subprocesses, and the tests check exit statuses, stderr and what lands on the topics.
(Concurrent and killed replays: test_ops_lease.py; hostile records: test_ops_hostile.py.)
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cassandra.cluster import Session
from confluent_kafka import Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from flows import connections
from flows.adapters.kafka.writer import KafkaWriter
from flows.core.model import Customer, OutMessage
from flows.core.outcome import RESERVED_HEADERS
from flows.settings import Settings
from ops import replay, scan
from ops.ranges import format_offsets
from ops.replay_rules import Selection
from ops.replay_setup import MIGRATED
from ops.replay_state import ReplayState, legacy_path
from tools import provision as flows_admin
from tools import sample
from tools.kafkautil import header, produce_all, read_topic

from .flowrun import ROOT, Topics, run_dataflow

N_GOOD = 150
N_MISSING = 12
N_CUSTOMERS = 50
BAD_KINDS = (0, 1, 3, 4, 5, 6, 7, 8, 9, 10)  # every kind but the over-the-limit one


@dataclass
class World:
    topics: Topics
    settings: Settings
    env: dict[str, str]
    recovery: Path
    missing_customer: str
    good_ids: list[str]
    missing_ids: list[str]
    n_input: int


def ops(
    world: World,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: Path = ROOT,
    unset: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """`python -m ops ARGS` as an operator runs it, from `cwd`, with `unset` not exported."""
    full = {**os.environ, **world.env, **(env or {}), "PYTHONPATH": str(ROOT)}
    for name in unset:
        full.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "ops", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full
    )


def run_flow(world: World) -> None:
    done = run_dataflow({**world.env, "STOP_AT_END": "true"}, args=("-r", str(world.recovery), "-s", "1", "-b", "0"))
    assert done.returncode == 0, done.stderr[-3000:]


Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]


def records(base: str, missing_customer: str) -> tuple[list[Record], list[str], list[str]]:
    """Good events with ids unique to this run, bad records, and events of a customer that
    PostgreSQL does not have yet (some without a key, so they spread over partitions)."""
    rng = random.Random(11)
    out: list[Record] = []
    good_ids: list[str] = []
    missing_ids: list[str] = []
    for i in range(N_GOOD):
        cid = sample.customer_id(i % N_CUSTOMERS)
        event = {**sample.good_event(rng, i, cid), "event_id": f"{base}-good-{i}"}
        good_ids.append(event["event_id"])
        out.append((cid.encode() if i % 2 else None, json.dumps(event).encode(), [("trace-id", f"g-{i}".encode())]))
        if i % 15 == 7:
            bad = sample.bad_record(1000 + i, BAD_KINDS[(i // 15) % len(BAD_KINDS)], 1 << 20)
            out.append((bad.key, bad.value, bad.headers))
    for i in range(N_MISSING):
        event = {**sample.good_event(rng, i, missing_customer), "event_id": f"{base}-late-{i}"}
        missing_ids.append(event["event_id"])
        key = None if i % 3 else f"late-{i}".encode()
        headers: list[tuple[str, bytes | None]] = [("trace-id", f"m-{i}".encode())]
        if i % 4 == 0:
            headers.append(("nullable", None))  # a null header value must stay null through a replay
        out.append((key, json.dumps(event).encode(), headers))
    return out, good_ids, missing_ids


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, pg_conninfo: str, admin: AdminClient) -> Iterator[World]:
    topics = Topics(prefix="itops", partitions=3).create()
    settings = topics.settings
    flows_admin.seed_customers(settings, sample.customers(N_CUSTOMERS))
    missing_customer = f"OPS-{uuid.uuid4().hex[:12]}"
    data, good_ids, missing_ids = records(topics.input.split(".")[0], missing_customer)
    produce_all(settings, topics.input, data)
    recovery = tmp_path_factory.mktemp("recovery")  # empty: the dataflow initializes it
    w = World(topics, settings, topics.env, recovery, missing_customer, good_ids, missing_ids, len(data))
    run_flow(w)
    yield w
    with psycopg.connect(pg_conninfo) as conn:
        conn.execute("DELETE FROM customers WHERE customer_id = %s", (missing_customer,))
    extra = [t for t in admin.list_topics(timeout=10).topics if t.startswith(topics.input.split(".")[0])]
    for fut in admin.delete_topics(extra, operation_timeout=30).values():
        fut.result(timeout=60)


def new_topic(world: World, suffix: str) -> str:
    name = f"{world.topics.input}.{suffix}"
    flows_admin.ensure_topics(world.settings, [name], 3)
    return name


def failure_records(world: World) -> list[Message]:
    return list(read_topic(world.settings, world.topics.failure))


def coords(msg: Message) -> tuple[int, int]:
    return msg.partition(), msg.offset()


def count_lines(stdout: str) -> dict[str, int]:
    """`  code    12` lines of a replay report."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if line.startswith("  ") and len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def state_row(world: World, cql: Session, target: str) -> tuple[str | None, str | None] | None:
    """The shared replay state of (this cluster, the failure topic, `target`): (state, owner)."""
    consumer = scan.open_consumer(world.settings)
    try:
        cluster = scan.cluster_id(consumer, 10)
    finally:
        consumer.close()
    row = cql.execute(
        f"SELECT state, owner FROM {world.settings.scylla_keyspace}.replay_state WHERE cluster_id = %s "
        "AND failure_topic = %s AND target_topic = %s",
        (cluster, world.topics.failure, target),
    ).one()
    return None if row is None else (row.state, row.owner)


def total_records(settings: Settings, topic: str) -> int:
    consumer = scan.open_consumer(settings)
    try:
        parts = scan.partitions(consumer, topic, 10)
        return sum(hi - lo for lo, hi in scan.watermarks(consumer, topic, parts, 10).values())
    finally:
        consumer.close()


# --- reconcile


def test_reconcile_after_a_run_finds_every_record(world: World) -> None:
    done = ops(world, "reconcile")
    assert done.returncode == 0, done.stderr
    assert "missing: none" in done.stdout and "duplicated: none" in done.stdout
    total = next(line for line in done.stdout.splitlines() if line.strip().startswith("total")).split()
    n_in, n_ok, n_failed = int(total[1]), int(total[2]), int(total[3])
    assert n_in == total_records(world.settings, world.topics.input) >= world.n_input
    assert n_ok + n_failed == n_in


def test_reconcile_offset_range_of_one_partition(world: World) -> None:
    done = ops(world, "reconcile", "--offsets", "1:0-4", "-q")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[2:] if line.split() and line.split()[0].isdigit()]
    assert rows == [["1", "0-4", "5", rows[0][3], rows[0][4], "0", "0"]]
    assert int(rows[0][3]) + int(rows[0][4]) == 5


def test_reconcile_detects_deleted_outputs(world: World, admin: AdminClient) -> None:
    """A copy of the success topic with the first records of partition 0 deleted
    (`delete_records`, as retention or an operator would): reconcile names exactly those."""
    copy = new_topic(world, "enriched-copy")
    originals = list(read_topic(world.settings, world.topics.output))
    producer = Producer(connections.kafka_common(world.settings))
    for m in originals:
        producer.produce(copy, m.value(), m.key(), partition=m.partition(), headers=m.headers())
    assert producer.flush(30) == 0
    first = sorted((m for m in read_topic(world.settings, copy) if m.partition() == 0), key=lambda m: m.offset())[:3]
    deleted = [(int(header(m, "source.partition")), int(header(m, "source.offset"))) for m in first]
    for fut in admin.delete_records([TopicPartition(copy, 0, first[-1].offset() + 1)]).values():
        fut.result(timeout=30)

    done = ops(world, "reconcile", env={"OUTPUT_TOPIC": copy})
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"missing: {len(deleted)} input records have no output" in done.stdout
    for p in sorted({p for p, _ in deleted}):
        assert f"  partition {p}: {format_offsets(o for q, o in deleted if q == p)}\n" in done.stdout


# --- replay


def test_replay_dry_run_counts_by_code_and_produces_nothing(world: World, cql: Session) -> None:
    failed = failure_records(world)
    codes = Counter(header(m, "error.code") for m in failed)
    before = total_records(world.settings, world.topics.input)
    done = ops(world, "replay", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f"would replay {len(failed)} records" in done.stdout
    assert count_lines(done.stdout) == dict(codes)
    only = ops(world, "replay", "--dry-run", "--code", "customer_not_found")
    assert count_lines(only.stdout) == {"customer_not_found": codes["customer_not_found"]}
    assert f"not selected: {len(failed) - codes['customer_not_found']} of {len(failed)}" in only.stdout
    # time: every dead letter was written in the last hour, none before the epoch's first second
    assert f"would replay {len(failed)} records" in ops(world, "replay", "--dry-run", "--since", "1h").stdout
    assert "would replay 0 records" in ops(world, "replay", "--dry-run", "--until", "1000").stdout
    # offsets: one dead letter
    p, o = coords(failed[0])
    assert "would replay 1 record " in ops(world, "replay", "--dry-run", "--offsets", f"{p}:{o}").stdout
    assert total_records(world.settings, world.topics.input) == before
    assert state_row(world, cql, world.topics.input) is None  # a dry run writes no state


def test_replay_refuses_the_failure_and_output_topics(world: World) -> None:
    for target, what in ((world.topics.failure, "failure topic"), (world.topics.output, "output topic")):
        done = ops(world, "replay", "--to", target)
        assert done.returncode == 2
        assert done.stderr.startswith(f"ops replay: error: refusing to replay into the {what} {target}")
        assert done.stderr.count("\n") == 1 and done.stdout == ""
    missing = ops(world, "replay", "--to", f"{world.topics.input}.nope")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_replay_refuses_a_topic_of_enriched_messages_without_output_topic_set(world: World) -> None:
    """The operator's shell does not export OUTPUT_TOPIC: the output topic is refused for
    what it holds (its records carry source.* headers), and nothing is produced."""
    before = total_records(world.settings, world.topics.output)
    for cmd in (("replay", "--to", world.topics.output), ("replay", "--to", world.topics.output, "--dry-run")):
        done = ops(world, *cmd, unset=("OUTPUT_TOPIC",))
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.startswith(
            f"ops replay: error: refusing to replay into {world.topics.output}: its record {world.topics.output}:"
        )
        assert "carries source.topic + source.partition + source.offset headers" in done.stderr
        assert done.stderr.count("\n") == 1 and done.stdout == ""
    assert total_records(world.settings, world.topics.output) == before
    # a topic holding only replays (replay.of) is an input topic: allowed
    replays = new_topic(world, "replays-only")
    produce_all(world.settings, replays, [(b"k", b"{}", [("replay.of", f"{world.topics.failure}:0:0".encode())])])
    done = ops(world, "replay", "--to", replays, "--dry-run", unset=("OUTPUT_TOPIC",))
    assert done.returncode == 0, done.stderr


def test_replay_resumes_after_an_interruption_without_duplicates(world: World, tmp_path: Path) -> None:
    """Three runs from three directories: the state they share says what was replayed."""
    target = new_topic(world, "retry-resume")
    failed = {coords(m): m for m in failure_records(world)}
    dirs = [tmp_path / name for name in ("a", "b", "c")]
    for d in dirs:
        d.mkdir()
    first = ops(world, "replay", "--to", target, "--limit", "4", "--chunk-size", "3", cwd=dirs[0])
    assert first.returncode == 0, first.stderr
    assert "stopped after 4 records (--limit)" in first.stdout
    assert total_records(world.settings, target) == 4

    rest = ops(world, "replay", "--to", target, "--chunk-size", "3", cwd=dirs[1])
    assert rest.returncode == 0, rest.stderr
    assert f"replayed {len(failed) - 4} records" in rest.stdout
    assert "skipped, replayed by an earlier run: 4" in rest.stdout
    again = ops(world, "replay", "--to", target, cwd=dirs[2])
    assert "replayed 0 records" in again.stdout
    assert not any((d / ".ops-state").exists() for d in dirs)  # nothing local any more

    replayed = list(read_topic(world.settings, target))
    refs = Counter(header(m, "replay.of") for m in replayed)
    assert refs == Counter({f"{world.topics.failure}:{p}:{o}": 1 for p, o in failed})
    assert any(("nullable", None) in (m.headers() or []) for m in replayed)
    for m in replayed:
        _, p, o = header(m, "replay.of").rsplit(":", 2)
        orig = failed[(int(p), int(o))]
        assert m.key() == orig.key() and m.value() == orig.value()
        kept = [(k, v) for k, v in orig.headers() or [] if k not in RESERVED_HEADERS]
        assert m.headers() == [*kept, ("replay.of", header(m, "replay.of").encode())]


def test_replay_stops_cleanly_on_sigint_and_resumes(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during a replay: the chunk in flight is finished and recorded, the run exits
    with 130, and the next run produces only the rest. (In-process, so the signal can be
    sent at a known point: right after the first chunk is acknowledged.)"""
    target = new_topic(world, "retry-sigint")
    failed = failure_records(world)

    class InterruptedAfterFirstChunk(KafkaWriter):
        def write(self, messages: Sequence[OutMessage]) -> list[int]:
            refused = super().write(messages)
            os.kill(os.getpid(), signal.SIGINT)
            return refused

    monkeypatch.setattr(replay, "KafkaWriter", InterruptedAfterFirstChunk)
    opts = replay.Options(Selection(), target=target, chunk_size=3, progress=False)
    out = io.StringIO()
    assert replay.run(world.settings, opts, out) == 130
    assert "replayed 3 records" in out.getvalue()
    assert total_records(world.settings, target) == 3

    monkeypatch.undo()
    out = io.StringIO()
    assert replay.run(world.settings, opts, out) == 0
    assert f"replayed {len(failed) - 3} records" in out.getvalue()
    refs = Counter(header(m, "replay.of") for m in read_topic(world.settings, target))
    assert refs == Counter({f"{world.topics.failure}:{m.partition()}:{m.offset()}": 1 for m in failed})


def _ident(world: World) -> tuple[str, str]:
    consumer = scan.open_consumer(world.settings)
    try:
        cluster = scan.cluster_id(consumer, 10)
    finally:
        consumer.close()
    return cluster, scan.topic_id(world.settings, world.topics.failure, 10)


def test_replay_settles_a_chunk_left_in_flight_by_a_killed_run(world: World, cql: Session) -> None:
    """The shared state says a chunk of 4 was in flight when its run died (recorded two
    minutes ago, so nothing of it can still be arriving), and 2 of them reached the
    target: the next run finds which, and produces only the others."""
    target = new_topic(world, "retry-killed")
    failed = sorted(failure_records(world), key=coords)
    chunk = failed[:4]
    cluster, topic_id = _ident(world)
    state = ReplayState(cluster, world.topics.failure, topic_id, target)
    state.begin([coords(m) for m in chunk], int(time.time() * 1000))
    written_us = int((time.time() - 120) * 1_000_000)
    cql.execute(
        f"UPDATE {world.settings.scylla_keyspace}.replay_state USING TIMESTAMP %s SET state = %s "
        "WHERE cluster_id = %s AND failure_topic = %s AND target_topic = %s",
        (written_us, state.dumps(), cluster, world.topics.failure, target),
    )
    delivered = [
        (m.key(), m.value(), [("replay.of", f"{world.topics.failure}:{m.partition()}:{m.offset()}".encode())])
        for m in chunk[:2]
    ]
    produce_all(world.settings, target, delivered)

    done = ops(world, "replay", "--to", target)
    assert done.returncode == 0, done.stderr
    assert "waiting" not in done.stderr
    assert "an earlier run stopped with 4 records in flight: 2 had reached" in done.stdout
    assert f"replayed {len(failed) - 2} records" in done.stdout
    refs = Counter(header(m, "replay.of") for m in read_topic(world.settings, target))
    assert refs == Counter({f"{world.topics.failure}:{m.partition()}:{m.offset()}": 1 for m in failed})


def test_replay_imports_a_legacy_state_file_once(world: World, tmp_path: Path, cql: Session) -> None:
    """A state file of the earlier version in ./.ops-state (3 dead letters replayed): the
    first run imports it into the shared state and renames it; those 3 are not replayed."""
    target = new_topic(world, "retry-legacy")
    failed = sorted(failure_records(world), key=coords)
    cluster, topic_id = _ident(world)
    old = ReplayState(cluster, world.topics.failure, topic_id, target)
    old.begin([coords(m) for m in failed[:3]], int(time.time() * 1000))
    old.commit()
    path = legacy_path(tmp_path / ".ops-state", cluster, world.topics.failure, target)
    path.parent.mkdir()
    path.write_text(old.dumps())

    done = ops(world, "replay", "--to", target, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        f"imported legacy state file .ops-state/{path.name} into {world.settings.scylla_keyspace}.replay_state "
        f"(3 dead letters replayed); renamed it to {path.name}{MIGRATED}" in done.stdout
    )
    assert f"replayed {len(failed) - 3} records" in done.stdout
    assert not path.exists() and path.with_name(path.name + MIGRATED).exists()
    refs = Counter(header(m, "replay.of") for m in read_topic(world.settings, target))
    assert refs == Counter({f"{world.topics.failure}:{m.partition()}:{m.offset()}": 1 for m in failed[3:]})
    row = state_row(world, cql, target)
    assert row is not None and row[1] is None  # the lease was given back
    again = ops(world, "replay", "--to", target, cwd=tmp_path)
    assert "imported" not in again.stdout and "replayed 0 records" in again.stdout


def test_replay_after_fixing_the_cause(world: World, tmp_path: Path) -> None:
    """The on-call story: customer_not_found dead letters; the customer is added to
    PostgreSQL; only those dead letters are replayed; the dataflow enriches them."""
    failed = failure_records(world)
    not_found = [m for m in failed if header(m, "error.code") == "customer_not_found"]
    assert len(not_found) > N_MISSING  # ours, plus sample ones whose customer stays unknown
    flows_admin.seed_customers(world.settings, [Customer(world.missing_customer, "Late Ltd", "smb", "PL", "active")])

    done = ops(world, "replay", "--code", "customer_not_found")
    assert done.returncode == 0, done.stderr
    assert count_lines(done.stdout) == {"customer_not_found": len(not_found)}
    repeat = ops(world, "replay", "--code", "customer_not_found", cwd=tmp_path)
    assert "replayed 0 records" in repeat.stdout
    assert f"skipped, replayed by an earlier run: {len(not_found)}" in repeat.stdout

    run_flow(world)
    enriched = [m for m in read_topic(world.settings, world.topics.output) if header(m, "replay.of")]
    docs = {json.loads(m.value())["event_id"]: json.loads(m.value()) for m in enriched}
    assert len(enriched) == N_MISSING and set(docs) == set(world.missing_ids)
    assert all(d["customer"]["name"] == "Late Ltd" for d in docs.values())
    again = [m for m in failure_records(world) if header(m, "replay.of")]
    assert len(again) == len(not_found) - N_MISSING  # the unknown customers fail again
    assert {header(m, "error.code") for m in again} == {"customer_not_found"}

    clean = ops(world, "reconcile")
    assert clean.returncode == 0, clean.stdout

    # trace a replayed event: the failed row, the enriched row, each with its output
    traced = ops(world, "trace", world.missing_ids[0])
    assert traced.returncode == 0, traced.stdout + traced.stderr
    assert "history row 1 of 2" in traced.stdout and "history row 2 of 2" in traced.stdout
    assert "-> failed (customer_not_found)" in traced.stdout and "-> enriched" in traced.stdout
    assert "header  error.code: customer_not_found" in traced.stdout
    assert f"header  replay.of: {world.topics.failure}:" in traced.stdout


# --- trace


def test_trace_by_event_id(world: World) -> None:
    event_id = world.good_ids[3]
    out = next(
        m for m in read_topic(world.settings, world.topics.output) if json.loads(m.value())["event_id"] == event_id
    )
    done = ops(world, "trace", event_id)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "history row 1 of 1:" in done.stdout and "-> enriched" in done.stdout
    assert f"output record {world.topics.output}:{out.partition()}:{out.offset()}" in done.stdout
    assert f"header  source.offset: {header(out, 'source.offset')}" in done.stdout
    assert '"customer":{"name":"Customer 3"' in done.stdout


def test_trace_by_source_of_an_unreadable_record(world: World) -> None:
    bad = next(m for m in failure_records(world) if header(m, "error.code") == "invalid_json")
    source = f"{header(bad, 'source.topic')}:{header(bad, 'source.partition')}:{header(bad, 'source.offset')}"
    done = ops(world, "trace", "--source", source)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"event_id {source} (its event_id can't be read" in done.stdout
    assert f"{source} -> failed (invalid_json)" in done.stdout
    assert f"output record {world.topics.failure}:{bad.partition()}:{bad.offset()}" in done.stdout
    assert "header  error.code: invalid_json" in done.stdout


def test_trace_by_source_of_a_good_record(world: World) -> None:
    done = ops(world, "trace", "--source", f"{world.topics.input}:0:0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(read from its value)" in done.stdout and "history row 1 of 1" in done.stdout


def test_trace_of_an_unknown_event_exits_1(world: World) -> None:
    done = ops(world, "trace", f"no-such-event-{uuid.uuid4().hex}")
    assert done.returncode == 1
    assert "no history row for event_id" in done.stdout
    gone = ops(world, "trace", "--source", f"{world.topics.input}:0:999999")
    assert gone.returncode == 1 and "is not in Kafka" in gone.stdout and "--full-scan" in gone.stdout


# --- errors before any work


def test_unreachable_kafka_exits_2_with_one_line(world: World) -> None:
    done = ops(world, "reconcile", env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "STARTUP_TIMEOUT_SECONDS": "2"})
    assert done.returncode == 2
    assert done.stderr.startswith("ops reconcile: error: Kafka at 127.0.0.1:1 (PLAINTEXT): can't connect")
    assert done.stderr.count("\n") == 1


EXIT_PROBE = """
import sys, time
from flows.adapters.scylla.session import connect
from flows.settings import Settings
cluster = connect(Settings.from_env())
cluster.connect().execute("SELECT release_version FROM system.local")
cluster.shutdown()
print(time.monotonic(), flush=True)
"""


def test_no_idle_wait_at_exit_after_the_cql_cluster_is_shut_down(cql: Session) -> None:
    """The driver joined its idle event-loop thread at exit for up to 5 s, in about half the
    runs (ops trace, the demo, every short CQL user): four runs, each gone within 2 s of
    its last line."""
    for _ in range(4):
        run = subprocess.run([sys.executable, "-c", EXIT_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
        gone = time.monotonic()
        assert run.returncode == 0, run.stderr[-2000:]
        assert gone - float(run.stdout.split()[-1]) < 2.0
