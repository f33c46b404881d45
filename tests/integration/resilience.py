"""Helpers for the fault-injection tests: a scenario with fresh topics and a recovery
directory, a steady background producer, stack control, and the accounting check."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cassandra.cluster import NoHostAvailable, Session
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from flows import connections
from flows.adapters.scylla.session import TABLE
from tools import provision, sample
from tools.kafkautil import header, read_topic

from .conftest import unique
from .flowrun import ROOT, Topics, dataflow_cmd

N_CUSTOMERS = 2000


def stack(action: str, server: str) -> None:
    """Stop or start one server of the local stack (same STACK_* environment as the tests)."""
    res = subprocess.run(
        [sys.executable, str(ROOT / "stack" / "stack.py"), action, server], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, f"stack {action} {server}: {res.stdout}{res.stderr}"


@dataclass
class Accounting:
    inputs: int
    outputs: int
    distinct: int
    duplicates: int
    lost: int
    history_rows: int
    history_missing: int
    codes: Counter[str] = field(default_factory=Counter)
    # rows that are not the processing of any message of their record in the outputs (their
    # processed_at is no message's enriched_at / failed_at): a late writer overwrote them
    history_stale: int = 0

    def report(self, name: str) -> str:
        return (
            f"[{name}] inputs={self.inputs} outputs={self.outputs} distinct={self.distinct} "
            f"duplicates={self.duplicates} lost={self.lost} history_rows={self.history_rows} "
            f"history_missing={self.history_missing} history_stale={self.history_stale} "
            f"failed_by_code={dict(self.codes)}"
        )


# what a client answers while a broker restarts, or before its metadata has a topic just made
TRANSIENT = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
}


def _transient(exc: KafkaException) -> bool:
    return bool(exc.args[0].retriable()) or exc.args[0].code() in TRANSIENT


class Scenario:
    """Fresh topics and customers for one test. `exactly_once` runs the flow with
    PROCESSING_GUARANTEE=exactly-once (no recovery directory: the group's offsets are the
    position) and reads its outputs as downstream consumers must (read_committed)."""

    def __init__(
        self, tmp: Path, partitions: int = 4, snapshot_s: int = 1, exactly_once: bool = False, **extra_env: str
    ) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.exactly_once = exactly_once
        self.group = unique("group")
        extra_env = {"CONSUMER_GROUP": self.group, **extra_env}
        if exactly_once:
            extra_env["PROCESSING_GUARANTEE"] = "exactly-once"
        self.topics = Topics(partitions=partitions, prefix="res", extra_env=extra_env).create()
        self.settings = self.topics.settings
        self.recovery = tmp / "recovery"
        self.snapshot_s = snapshot_s
        self.log = tmp / "dataflow.log"
        self.expected: Counter[str] = Counter()
        provision.seed_customers(self.settings, sample.customers(N_CUSTOMERS))

    def args(self) -> tuple[str, ...]:
        if self.exactly_once:
            return ()
        return ("-r", str(self.recovery), "-s", str(self.snapshot_s), "-b", "0")

    def env(self, stop_at_end: bool, **extra: str) -> dict[str, str]:
        return {**os.environ, **self.topics.env, "STOP_AT_END": "true" if stop_at_end else "false", **extra}

    def start(self, stop_at_end: bool, log: Path | None = None, **extra: str) -> subprocess.Popen[bytes]:
        out = open(log or self.log, "ab")  # noqa: SIM115 - lives as long as the process
        return subprocess.Popen(
            dataflow_cmd(*self.args()), cwd=ROOT, env=self.env(stop_at_end, **extra), stdout=out, stderr=out
        )

    def run_to_end(self, timeout: float = 240, **extra: str) -> int:
        proc = self.start(stop_at_end=True, **extra)
        return proc.wait(timeout)

    def group_offsets(self) -> dict[int, tuple[int, int]]:
        """Per input partition: (the group's committed offset or -1, the end of the partition)."""
        # read_uncommitted: the offsets committed so far, without waiting for a transaction
        # still open (read_committed asks the broker for stable offsets and waits)
        conf = {
            **connections.kafka_common(self.settings),
            "group.id": self.group,
            "isolation.level": "read_uncommitted",
        }
        consumer = Consumer(conf)
        try:
            meta = consumer.list_topics(self.topics.input, timeout=10).topics[self.topics.input]
            partitions = sorted(meta.partitions)  # partitions added at run time too
            parts = [TopicPartition(self.topics.input, p) for p in partitions]
            committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=30)}
            return {
                p: (committed.get(p, -1), consumer.get_watermark_offsets(TopicPartition(self.topics.input, p), 10)[1])
                for p in partitions
            }
        finally:
            consumer.close()

    def lag(self) -> int:
        """The group's lag on the input: records after its committed offsets (-1 offsets: all)."""
        return sum(high - max(committed, 0) for committed, high in self.group_offsets().values())

    def wait_for_lag_zero(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                lag = self.lag()
            except KafkaException as exc:  # the broker just restarted: coordinators move
                if not _transient(exc):
                    raise
                lag = -1
            if lag == 0:
                return
            assert time.monotonic() < deadline, f"the group's lag is still {lag} after {timeout}s"
            time.sleep(0.5)

    def records(self, n: int, seed: int) -> list[sample.SampleRecord]:
        recs = list(sample.events(n, N_CUSTOMERS, bad_ratio=0.01, seed=seed, large=False))
        self.expected.update(r.expect for r in recs)
        return recs

    def output_count(self) -> int:
        """Messages in the success and failure topics, from their watermarks (cheap)."""
        consumer = Consumer({**connections.kafka_common(self.settings), "group.id": "watermarks"})
        try:
            total = 0
            for topic in (self.topics.output, self.topics.failure):
                for p in range(self.topics.partitions):
                    try:
                        lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                    except KafkaException as exc:  # not in this client's metadata yet: none counted
                        if not _transient(exc):
                            raise
                        continue
                    total += hi - lo
            return total
        finally:
            consumer.close()

    def wait_for_outputs(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                count = self.output_count()
            except KafkaException as exc:  # the broker just restarted: leaders are being elected
                if not _transient(exc):
                    raise
                count = -1
            if count >= n:
                return
            assert time.monotonic() < deadline, f"only {count} of {n} outputs after {timeout}s"
            time.sleep(0.5)

    def _history(self, cql: Session) -> list[Any]:
        """The history rows of the input topic; the session may still be reconnecting after
        a Cassandra outage, so wait for it (bounded)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                return list(
                    cql.execute(
                        f"SELECT source_partition, source_offset, processed_at FROM {self.topics.keyspace}.{TABLE} "
                        f"WHERE source_topic = %s ALLOW FILTERING",
                        (self.topics.input,),
                        timeout=120,
                    )
                )
            except NoHostAvailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def account(self, cql: Session) -> Accounting:
        s = self.settings
        # the input as its readers see it: a transactional producer's aborted records are not in it
        inputs = {(m.partition(), m.offset()) for m in read_topic(s, self.topics.input, 120, True)}
        committed = self.exactly_once
        outs = list(read_topic(s, self.topics.output, 120, committed)) + list(
            read_topic(s, self.topics.failure, 120, committed)
        )
        seen = Counter((int(header(m, "source.partition") or -1), int(header(m, "source.offset") or -1)) for m in outs)
        rows = self._history(cql)
        history = {(r.source_partition, r.source_offset) for r in rows}
        # by distinct input offset: a duplicate after a crash is not a second failure
        code_of = {(header(m, "source.partition"), header(m, "source.offset")): header(m, "error.code") for m in outs}
        codes = Counter(c for c in code_of.values() if c)
        times: dict[tuple[int, int], set[str]] = {}
        for m in outs:
            at = (int(header(m, "source.partition") or -1), int(header(m, "source.offset") or -1))
            times.setdefault(at, set()).add(processed_at(m))
        stale = sum(
            1
            for r in rows
            if (r.source_partition, r.source_offset) in times
            and rfc3339(r.processed_at) not in times[(r.source_partition, r.source_offset)]
        )
        return Accounting(
            inputs=len(inputs),
            outputs=len(outs),
            distinct=len(set(seen) & inputs),
            duplicates=sum(n - 1 for n in seen.values()),
            lost=len(inputs - set(seen)),
            history_rows=len(history & inputs),
            history_missing=len(inputs - history),
            codes=codes,
            history_stale=stale,
        )


def processed_at(m: Any) -> str:
    """When the message's processing happened: a dead letter's `failed_at`, an enriched
    message's `enriched_at` (the same instant as its history row's `processed_at`)."""
    failed = header(m, "failed_at")
    if failed is not None:
        return failed
    return str(json.loads(m.value())["enriched_at"])


def rfc3339(moment: dt.datetime) -> str:
    """A history row's timestamp as the messages write theirs (UTC, milliseconds)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class SteadyProducer(threading.Thread):
    """Produces `records` at about `rate` per second in the background, riding out broker
    restarts (idempotent producer, long message timeout); `join()` then check `error`."""

    def __init__(self, scenario: Scenario, records: list[sample.SampleRecord], rate: float) -> None:
        super().__init__(daemon=True)
        self.scenario, self.records, self.rate = scenario, records, rate
        self.error: str | None = None
        self.delivered = 0

    def run(self) -> None:
        s = self.scenario.settings
        producer = Producer(
            {
                **connections.kafka_common(s),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 120000,
                "topic.metadata.refresh.interval.ms": 2000,  # partitions added mid-stream get records
                # batches that pile up while the broker is away must still fit the topic
                # (its max.message.bytes is sized for MAX_VALUE_BYTES, which tests lower)
                "batch.size": 16384,
            }
        )
        failures: list[str] = []

        def cb(err, _msg) -> None:  # type: ignore[no-untyped-def]
            if err is None:
                self.delivered += 1
            else:
                failures.append(str(err))

        start = time.monotonic()
        for i, rec in enumerate(self.records):
            due = start + i / self.rate
            while time.monotonic() < due:
                producer.poll(min(0.01, max(0.0, due - time.monotonic())))
            while True:
                try:
                    producer.produce(
                        self.scenario.topics.input, rec.value, rec.key, headers=rec.headers, on_delivery=cb
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
        left = producer.flush(180)
        if left or failures:
            self.error = f"{left} unflushed, {len(failures)} failed: {failures[:2]}"


def sigterm(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout)
    return rc, time.monotonic() - started


def crash_loop(
    sc: Scenario, cql: Session, n: int, rate: float, seed: int, pause: tuple[float, float], label: str
) -> Accounting:
    """Feed `n` records at `rate` while the dataflow is SIGKILLed three times at a random
    moment `pause` seconds into its output, then run it to the end; the accounting."""
    records = sc.records(n, seed=seed)
    # fed at a fixed rate while the dataflow runs, so every kill lands mid-stream however
    # fast the dataflow is on this machine
    feeder = SteadyProducer(sc, records, rate)
    feeder.start()
    rng = random.Random(seed)
    kills = 0
    for _ in range(3):
        before = sc.output_count()
        proc = sc.start(stop_at_end=False)
        while proc.poll() is None and sc.output_count() <= before:
            time.sleep(0.05)
        time.sleep(rng.uniform(*pause))
        if proc.poll() is None:
            proc.kill()  # SIGKILL: no chance to flush, snapshot or commit
            proc.wait(30)
            kills += 1
    fed_while_killing = feeder.delivered
    feeder.join(300)
    assert feeder.error is None, feeder.error
    assert kills == 3, sc.log.read_text()[-3000:]
    assert fed_while_killing < n, "the kills happened while records were still arriving"
    assert sc.run_to_end() == 0, sc.log.read_text()[-3000:]
    acc = sc.account(cql)
    print(acc.report(f"{label}, {kills} x SIGKILL"))
    assert acc.inputs == n
    return acc
