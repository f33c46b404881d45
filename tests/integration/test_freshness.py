"""Fresh reference data on the real stack (CACHE_INVALIDATION=notify): the trigger that
`python -m ops migrate install` puts on `customers`, and the dataflow's caches dropping a
changed customer within a second, across 2 processes x 2 workers, including after the
listening connection is lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException

from flows import connections
from flows.adapters.postgres import changes
from flows.core.model import Customer
from flows.settings import Settings
from tools import provision, sample
from tools.kafkautil import produce_all, read_topic

from .flowrun import ROOT, Topics
from .test_scale import free_base_port

INSERT = "INSERT INTO customers (customer_id, name, segment, country, status) VALUES (%s, 'n', 's', 'FR', 'active')"
BOUND_S = 1.0  # the freshness promise: a record produced this long after the commit sees it
LONG_TTL = {"CACHE_TTL_SECONDS": "3600", "CACHE_NEGATIVE_TTL_SECONDS": "3600"}


def ops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def installed(pg_conninfo: str) -> Iterator[None]:
    first, again = ops("migrate", "install"), ops("migrate", "install")
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert "installed: table customers announces its changes" in again.stdout
    status = ops("migrate", "status")
    assert status.returncode == 0, status.stdout
    yield


def test_the_trigger_announces_every_committed_change(installed: None, pg_conninfo: str) -> None:
    cid = f"fresh-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_conninfo, autocommit=True) as listener, psycopg.connect(pg_conninfo) as writer:
        listener.execute(f"LISTEN {changes.CHANNEL}")
        with writer.transaction():
            writer.execute(
                INSERT,
                (cid,),
            )
        with writer.transaction():
            writer.execute("UPDATE customers SET status = 'blocked' WHERE customer_id = %s", (cid,))
        with writer.transaction():
            writer.execute("UPDATE customers SET customer_id = %s WHERE customer_id = %s", (cid + "-x", cid))
        tx = writer.transaction()
        with pytest.raises(RuntimeError), tx:  # rolled back: announces nothing
            writer.execute("UPDATE customers SET status = 'x' WHERE customer_id = %s", (cid + "-x",))
            raise RuntimeError("roll back")
        with writer.transaction():
            writer.execute("DELETE FROM customers WHERE customer_id = %s", (cid + "-x",))
        long_id = "L" * 9000
        with writer.transaction():
            writer.execute(
                INSERT,
                (long_id,),
            )
            writer.execute("DELETE FROM customers WHERE customer_id = %s", (long_id,))
        got = [n.payload for n in listener.notifies(timeout=2.0, stop_after=6)]
    # insert, update, rename (the old and the new id), delete, then an id too long for a
    # payload, inserted and deleted in one transaction: '' once (PostgreSQL folds the same
    # notification of one transaction into one)
    assert got == [cid, cid, cid, cid + "-x", cid + "-x", ""]


def test_a_missing_trigger_stops_the_dataflow_at_start(pg_conninfo: str) -> None:
    """Checked against a database without the trigger (the check reads pg_trigger)."""
    db = f"fresh_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_conninfo, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    try:
        dsn = pg_conninfo.rsplit("/", 1)[0] + f"/{db}"
        topics = Topics(partitions=1, prefix="freshmissing").create()
        provision.seed_customers(Settings.from_env({**os.environ, **topics.env, "PG_DSN": dsn}), [])  # the table
        run = subprocess.run(
            [sys.executable, "-m", "bytewax.run", "dataflow"],
            cwd=ROOT,
            env={**os.environ, **topics.env, "PG_DSN": dsn, "CACHE_INVALIDATION": "notify", "STOP_AT_END": "true"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2, run.stderr[-2000:]
        assert "CACHE_INVALIDATION=notify: table 'customers' has no change trigger" in run.stderr
        assert "python -m ops migrate install" in run.stderr
    finally:
        with psycopg.connect(pg_conninfo, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


class Stream:
    """Produces one event a few milliseconds apart for a set of customers, from a thread,
    until stopped; each event says when it was sent (`sent_ns`, wall clock)."""

    def __init__(self, topics: Topics, customer_ids: list[str], interval_s: float = 0.005) -> None:
        self.topics, self.ids, self.interval = topics, customer_ids, interval_s
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from confluent_kafka import Producer

        producer = Producer({**connections.kafka_common(self.topics.settings), "linger.ms": 1})
        i = 0
        while not self._stop.is_set():
            cid = self.ids[i % len(self.ids)]
            doc = {
                "event_id": f"fresh-{i}",
                "event_type": "t",
                "occurred_at": "2026-12-03T00:00:00Z",
                "customer_id": cid,
                "payload": {"sent_ns": time.time_ns()},
            }
            # round robin over the partitions: every worker sees every customer
            producer.produce(self.topics.input, json.dumps(doc).encode(), partition=i % self.topics.partitions)
            producer.poll(0)
            i += 1
            time.sleep(self.interval)
        producer.flush(30)
        self.sent = i

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def start_cluster(topics: Topics, log: Path, processes: int = 2, workers: int = 2) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tools.run_local", "-p", str(processes), "-w", str(workers)]
    cmd += ["--base-port", str(free_base_port(processes)), "-r", "none"]
    env = {**os.environ, **topics.env, **LONG_TTL, "CACHE_INVALIDATION": "notify", "SOURCE_BATCH_SIZE": "50"}
    out = open(log, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)


def seen_by_customer(topics: Topics) -> dict[str, list[tuple[int, dict[str, object] | None]]]:
    """Per customer: (sent_ns, the customer member or None when dead-lettered), by sent_ns."""
    out: dict[str, list[tuple[int, dict[str, object] | None]]] = {}
    settings = topics.settings
    for m in read_topic(settings, topics.output):
        doc = json.loads(m.value())
        out.setdefault(doc["customer_id"], []).append((doc["payload"]["sent_ns"], doc["customer"]))
    for m in read_topic(settings, topics.failure):
        doc = json.loads(m.value())
        out.setdefault(doc["customer_id"], []).append((doc["payload"]["sent_ns"], None))
    for seq in out.values():
        seq.sort(key=lambda t: t[0])
    return out


def stale_after(seq: list[tuple[int, dict[str, object] | None]], committed_ns: int, fresh) -> list[int]:  # type: ignore[no-untyped-def]
    """Records sent more than BOUND_S after the commit that don't show the change."""
    limit = committed_ns + int(BOUND_S * 1e9)
    return [sent for sent, member in seq if sent > limit and not fresh(member)]


def wait_flowing(topics: Topics, timeout: float = 120) -> None:
    """Until the dataflow has written records for a few seconds (a cluster may take a while
    to start on a busy machine): its caches hold the stream's customers then."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if sum(len(v) for v in seen_by_customer(topics).values()):
                break
        except KafkaException as exc:  # a topic just made: its partitions' leaders may not be known yet
            if not exc.args[0].retriable() and exc.args[0].code() != KafkaError.NOT_LEADER_FOR_PARTITION:
                raise
        assert time.monotonic() < deadline, f"no output after {timeout}s"
        time.sleep(0.5)
    time.sleep(3)


def log_lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def commit(pg_conninfo: str, statement: str, *params: object) -> int:
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        conn.execute(statement, params)
    return time.time_ns()


def test_changes_reach_the_stream_within_a_second_across_processes(
    installed: None, pg_conninfo: str, tmp_path: Path
) -> None:
    topics = Topics(partitions=4, prefix="fresh").create()
    tag = uuid.uuid4().hex[:6]
    updated, inserted, deleted = f"upd-{tag}", f"ins-{tag}", f"del-{tag}"
    provision.seed_customers(
        topics.settings,
        [Customer(updated, "Before", "smb", "FR", "active"), Customer(deleted, "Gone", "smb", "FR", "active")],
    )
    log = tmp_path / "cluster.log"
    proc = start_cluster(topics, log)
    try:
        with Stream(topics, [updated, inserted, deleted]) as stream:
            wait_flowing(topics)  # every worker has each customer cached now (the TTLs are an hour)
            t_update = commit(
                pg_conninfo, "UPDATE customers SET status = 'blocked', name = 'After' WHERE customer_id = %s", updated
            )
            t_insert = commit(
                pg_conninfo,
                INSERT.replace("'n'", "'New'"),
                inserted,
            )
            t_delete = commit(pg_conninfo, "DELETE FROM customers WHERE customer_id = %s", deleted)
            time.sleep(4)
        expected = stream.sent
        deadline = time.monotonic() + 90
        while sum(len(v) for v in seen_by_customer(topics).values()) < expected and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(60)
    seen = seen_by_customer(topics)
    assert sum(len(v) for v in seen.values()) == expected, log.read_text()[-3000:]
    assert [m for sent, m in seen[updated] if sent < t_update and m and m["status"] == "active"], "as it was"
    assert not stale_after(seen[updated], t_update, lambda m: m and m["status"] == "blocked" and m["name"] == "After")
    assert [m for sent, m in seen[inserted] if sent < t_insert and m is None], "not found before its insert"
    assert not stale_after(seen[inserted], t_insert, lambda m: m and m["name"] == "New")
    assert not stale_after(seen[deleted], t_delete, lambda m: m is None)
    # both processes ran (each logs its settings at start); every partition had every customer
    assert {line["process"] for line in log_lines(log)} == {0, 1}


def test_parked_records_come_back_once_when_their_customers_arrive(installed: None, tmp_path: Path) -> None:
    """N customer_not_found dead letters, an `ops replay --if-customer-exists --follow`
    watching, the customers inserted in two steps: N enriched messages, each event once, and
    a later run finds nothing left to replay."""
    topics = Topics(partitions=2, prefix="parked").create()
    settings = topics.settings
    tag = uuid.uuid4().hex[:6]
    ids = [f"late-{tag}-{i}" for i in range(6)]
    events = [
        json.dumps(
            {
                "event_id": f"parked-{tag}-{n}",
                "event_type": "t",
                "occurred_at": "2026-12-03T00:00:00Z",
                "customer_id": ids[n % len(ids)],
            }
        ).encode()
        for n in range(18)
    ]
    env = {**os.environ, **topics.env, **LONG_TTL, "CACHE_INVALIDATION": "notify"}
    log = tmp_path / "dataflow.log"
    with open(log, "ab") as out:
        # one dataflow all along (it has no recovery: a second one would read the input again)
        flow = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "dataflow"], cwd=ROOT, env=env, stdout=out, stderr=out
        )
        produce_all(settings, topics.input, [sample.SampleRecord(None, v, [], "customer_not_found") for v in events])
        deadline = time.monotonic() + 60
        while len(list(read_topic(settings, topics.failure))) < 18 and time.monotonic() < deadline:
            time.sleep(1)
        assert len(list(read_topic(settings, topics.failure))) == 18, log.read_text()[-3000:]
        watcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ops",
                "replay",
                "--if-customer-exists",
                "--follow",
                "--interval",
                "5",
                "--settle",
                "1",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
        )
        try:

            def enriched_ids() -> list[str]:
                return [json.loads(m.value())["event_id"] for m in read_topic(settings, topics.output)]

            def wait_for(n: int) -> list[str]:
                deadline = time.monotonic() + 90
                while len(got := enriched_ids()) < n and time.monotonic() < deadline:
                    time.sleep(1)
                return got

            provision.seed_customers(settings, [Customer(c, "Late", "smb", "FR", "active") for c in ids[:3]])
            assert len(wait_for(9)) == 9, log.read_text()[-3000:]
            provision.seed_customers(settings, [Customer(c, "Late", "smb", "FR", "active") for c in ids[3:]])
            got = wait_for(18)
            time.sleep(6)  # another round of the watcher: nothing more comes
            got = enriched_ids()
        finally:
            watcher.terminate()
            rc = watcher.wait(60)
            flow.terminate()
            flow.wait(60)
    assert rc == 0, log.read_text()[-3000:]
    assert sorted(got) == sorted(f"parked-{tag}-{n}" for n in range(18)), "each parked event enriched once"
    assert len(list(read_topic(settings, topics.failure))) == 18, "none dead-lettered again"
    again = subprocess.run(
        [sys.executable, "-m", "ops", "replay", "--if-customer-exists", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("replayed 0 records"), again.stdout
    assert "skipped, replayed by an earlier run: 18" in again.stdout


def run_changing(
    topics: Topics,
    tmp_path: Path,
    pg_conninfo: str,
    cid: str,
    disrupt,
    settle_s: float,  # type: ignore[no-untyped-def]
) -> tuple[list[tuple[int, dict[str, object] | None]], int, str]:
    """A dataflow (2 workers) streaming records of `cid`; `disrupt()` runs mid-stream and
    returns the commit time of the change it made. Its records, the commit time, the log."""
    log = tmp_path / "flow.log"
    proc = start_cluster(topics, log, processes=1, workers=2)
    try:
        with Stream(topics, [cid]) as stream:
            wait_flowing(topics)
            committed = disrupt()
            time.sleep(settle_s)
        deadline = time.monotonic() + 90
        while sum(len(v) for v in seen_by_customer(topics).values()) < stream.sent and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(60)
    return seen_by_customer(topics)[cid], committed, log.read_text()


def test_a_lost_listening_connection_clears_the_caches(installed: None, pg_conninfo: str, tmp_path: Path) -> None:
    """The listener's session is killed and the customer changed at once, while nobody
    listens: that notification is lost, and the reconnection clears every cache instead."""
    topics = Topics(partitions=2, prefix="freshlost").create()
    cid = f"lost-{uuid.uuid4().hex[:6]}"
    provision.seed_customers(topics.settings, [Customer(cid, "Before", "smb", "FR", "active")])

    def kill_then_change() -> int:
        with psycopg.connect(pg_conninfo, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'enrichment-changes' AND query LIKE 'LISTEN%%'"
            ).fetchall()
            assert killed, "the listener's session"
            conn.execute("UPDATE customers SET name = 'After' WHERE customer_id = %s", (cid,))
        return time.time_ns()

    seq, committed, log = run_changing(topics, tmp_path, pg_conninfo, cid, kill_then_change, settle_s=8)
    assert "listening again, every worker's cache cleared" in log
    # fresh once the listener is back (it retries after 0.5 s), within the bound after that
    late = committed + int((BOUND_S + 1) * 1e9)
    assert [m for sent, m in seq if sent < committed and m and m["name"] == "Before"]
    assert all(m and m["name"] == "After" for sent, m in seq if sent > late)


@pytest.mark.outage
def test_postgresql_restarted_mid_stream_leaves_no_stale_entry(
    installed: None, pg_conninfo: str, tmp_path: Path
) -> None:
    from .resilience import stack

    topics = Topics(partitions=2, prefix="freshrestart").create()
    cid = f"restart-{uuid.uuid4().hex[:6]}"
    provision.seed_customers(topics.settings, [Customer(cid, "Before", "smb", "FR", "active")])

    def restart_then_change() -> int:
        stack("down", "postgres")
        time.sleep(3)
        stack("up", "postgres")
        return commit(pg_conninfo, "UPDATE customers SET name = 'After' WHERE customer_id = %s", cid)

    seq, committed, log = run_changing(topics, tmp_path, pg_conninfo, cid, restart_then_change, settle_s=10)
    assert "listening again, every worker's cache cleared" in log
    # the listener retries at most every 5 s: fresh within that and the bound
    late = committed + int((BOUND_S + 5) * 1e9)
    assert all(m and m["name"] == "After" for sent, m in seq if sent > late), [
        (sent - committed) / 1e9 for sent, m in seq if sent > committed and not (m and m["name"] == "After")
    ][:5]
