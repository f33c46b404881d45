"""Read back what a variant wrote and check it: every input record accounted for exactly
once in its success or failure topic with the outcome the contract gives it, one history
row each, and the latency of each from Kafka's own timestamps (output append time minus
input create time).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cassandra.cluster import Cluster
from cassandra.query import SimpleStatement
from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_LOG_APPEND_TIME, Consumer, Message, TopicPartition

from bench.workload import Expected, Loaded
from flows import connections
from flows.adapters.scylla.session import TABLE, connect
from flows.settings import Settings
from tools.kafkautil import read_topic

MAX_PROBLEMS = 10


@dataclass
class Outputs:
    """What came out of one variant, and what is wrong with it (empty `problems`: correct)."""

    append_ms: list[int] = field(default_factory=list)
    latencies_ms: list[int] = field(default_factory=list)
    create_ms: list[int] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    expected: int = 0
    problems: list[str] = field(default_factory=list)
    history: dict[str, Any] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return len(self.append_ms)

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def gate(self) -> dict[str, Any]:
        return {
            "ok": not self.problems,
            "expected": self.expected,
            "outputs": self.records,
            "outcomes": dict(sorted(self.outcomes.items())),
            "history": self.history,
            "problems": list(self.problems),
        }


def _headers(msg: Message) -> dict[str, bytes]:
    return {k: v for k, v in msg.headers() or [] if v is not None}


def _append_ms(msg: Message, out: Outputs) -> int:
    kind, ts = msg.timestamp()
    if kind != TIMESTAMP_LOG_APPEND_TIME:
        out.problem(f"{msg.topic()} has no log-append timestamps (type {kind})")
    return int(ts)


class VisibleTail(threading.Thread):
    """Reads the output topics as a downstream consumer must read exactly-once output
    (`read_committed`), from their start, and notes when each output became visible to it
    (wall clock, ms), by the input record its `source.*` headers name. A transactional
    message is appended when produced but visible only once its transaction commits: the
    log-append time would hide the commit interval, this does not."""

    def __init__(self, settings: Settings, topics: list[str], partitions: int) -> None:
        super().__init__(daemon=True, name="visible-tail")
        self._consumer = Consumer(
            {
                **connections.kafka_common(settings),
                "group.id": f"bench-visible-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 5,
            }
        )
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(partitions)])
        self._stopping = threading.Event()
        self.seen: dict[tuple[int, int], int] = {}

    def run(self) -> None:
        seen = self.seen
        while not self._stopping.is_set():
            msgs = self._consumer.consume(1000, 0.05)
            now = int(time.time() * 1000)
            for msg in msgs:
                if msg.error():
                    continue
                h = _headers(msg)
                try:
                    where = (int(h["source.partition"]), int(h["source.offset"]))
                except (KeyError, ValueError):
                    continue
                seen.setdefault(where, now)
        self._consumer.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join(30)


def visible_latencies(
    loaded: Loaded, seen: Mapping[tuple[int, int], int], t0_ms: float, t1_ms: float
) -> tuple[list[tuple[int, int]], int]:
    """(create time, visible time minus create time) of the inputs created in [t0, t1]; and
    how many of those were never seen."""
    latencies: list[tuple[int, int]] = []
    unseen = 0
    for p, rows in loaded.by_partition.items():
        base = loaded.base[p]
        for i, row in enumerate(rows):
            if t0_ms <= row.create_ms <= t1_ms:
                at = seen.get((p, base + i))
                if at is None:
                    unseen += 1
                else:
                    latencies.append((row.create_ms, at - row.create_ms))
    return latencies, unseen


def check_by_headers(
    settings: Settings,
    loaded: Loaded,
    success_topic: str,
    failure_topic: str,
    upto: Mapping[int, int] | None = None,
    committed_only: bool = False,
) -> Outputs:
    """Outputs that name their input in `source.*` headers (the dataflow, the naive
    handler). `upto`: the next offset per partition where a variant stopped early; the
    records before it are expected, those after it must not appear. `committed_only`:
    read as a `read_committed` consumer (exactly-once output)."""
    out = Outputs()
    expected: dict[tuple[int, int], Expected] = {}
    for p, rows in loaded.by_partition.items():
        base = loaded.base[p]
        stop = base + len(rows) if upto is None else min(upto.get(p, base), base + len(rows))
        for off in range(base, stop):
            expected[(p, off)] = rows[off - base]
    out.expected = len(expected)
    seen: set[tuple[int, int]] = set()
    dupes = unknown = wrong = 0
    for topic, ok in ((success_topic, True), (failure_topic, False)):
        for msg in read_topic(settings, topic, 600, committed_only):
            appended = _append_ms(msg, out)
            h = _headers(msg)
            try:
                if h["source.topic"].decode() != loaded.topic:
                    raise KeyError("source.topic")
                where = (int(h["source.partition"]), int(h["source.offset"]))
            except (KeyError, ValueError):
                out.problem(f"{topic} offset {msg.offset()}: missing or foreign source.* headers")
                continue
            outcome = "enriched" if ok else (h.get("error.code") or b"?").decode()
            out.outcomes[outcome] += 1
            want = expected.get(where)
            if want is None:
                unknown += 1
                continue
            if where in seen:
                dupes += 1
                continue
            seen.add(where)
            if want.outcome != "?" and want.outcome != outcome:
                wrong += 1
                if wrong <= 3:
                    out.problem(f"input {where}: expected {want.outcome}, got {outcome}")
            out.append_ms.append(appended)
            out.latencies_ms.append(appended - want.create_ms)
            out.create_ms.append(want.create_ms)
    missing = len(expected) - len(seen)
    for n, what in (
        (missing, "input records with no output"),
        (dupes, "duplicate outputs"),
        (unknown, "outputs for records outside the expected range"),
        (wrong, "records with the wrong outcome"),
    ):
        if n:
            out.problem(f"{n} {what}")
    return out


def check_passthrough(settings: Settings, loaded: Loaded, output_topic: str) -> Outputs:
    """The passthrough copies partition p of the input to partition p of its output, in
    order, so the k-th output of a partition is the k-th input record of it, same bytes."""
    out = Outputs(expected=loaded.records)
    position: Counter[int] = Counter()
    mismatched = extra = 0
    for msg in read_topic(settings, output_topic, timeout=600):
        appended = _append_ms(msg, out)
        p = msg.partition()
        k = position[p]
        position[p] += 1
        rows = loaded.by_partition.get(p, [])
        if k >= len(rows):
            extra += 1
            continue
        want = rows[k]
        value = msg.value()
        if (zlib.crc32(value) if value is not None else -1) != want.crc:
            mismatched += 1
        out.outcomes["copied"] += 1
        out.append_ms.append(appended)
        out.latencies_ms.append(appended - want.create_ms)
    missing = sum(max(0, len(rows) - position[p]) for p, rows in loaded.by_partition.items())
    for n, what in (
        (missing, "input records not copied"),
        (extra, "extra outputs"),
        (mismatched, "outputs whose bytes differ from their input"),
    ):
        if n:
            out.problem(f"{n} {what}")
    return out


def check_history(
    settings: Settings,
    keyspace: str,
    loaded: Loaded,
    out: Outputs,
    upto: Mapping[int, int] | None = None,
    statuses: bool = True,
) -> None:
    """One `event_history` row per expected input record, with the status and error code
    of its outcome (the whole table of the variant's own keyspace is read); `statuses=False`
    counts the rows only (the I/O floor writes no outcome)."""
    logging.getLogger("cassandra").setLevel(logging.ERROR)
    cluster: Cluster = connect(settings)
    try:
        session = cluster.connect()
        stmt = SimpleStatement(
            f"SELECT source_topic, source_partition, source_offset, status, error_code FROM {keyspace}.{TABLE}",
            fetch_size=5000,
        )
        rows: dict[tuple[int, int], tuple[str, str | None]] = {}
        foreign = 0
        for topic, p, off, status, code in session.execute(stmt, timeout=120):
            if topic != loaded.topic:
                foreign += 1
                continue
            rows[(p, off)] = (status, code)
    finally:
        cluster.shutdown()
    missing = wrong = 0
    expected = 0
    for p, recs in loaded.by_partition.items():
        base = loaded.base[p]
        stop = base + len(recs) if upto is None else min(upto.get(p, base), base + len(recs))
        for off in range(base, stop):
            expected += 1
            got = rows.get((p, off))
            want = recs[off - base].outcome
            if got is None:
                missing += 1
            elif (
                statuses
                and want != "?"
                and (
                    got[0] != ("enriched" if want == "enriched" else "failed")
                    or (want != "enriched" and got[1] != want)
                )
            ):
                wrong += 1
    out.history = {
        "keyspace": keyspace,
        "rows": len(rows),
        "expected": expected,
        "missing": missing,
        "wrong_status": wrong,
        "extra": max(0, len(rows) - (expected - missing)),
    }
    if missing:
        out.problem(f"{missing} history rows missing")
    if wrong:
        out.problem(f"{wrong} history rows with the wrong status")
    if out.history["extra"]:
        out.problem(f"{out.history['extra']} history rows for records outside the expected range")


def read_input(settings: Settings, topic: str) -> Loaded:
    """An input topic fed by someone else (the fixed-rate feeder): create times only, the
    outcomes unchecked ("?")."""
    loaded = Loaded(topic, 0, 0.0, 0.0)
    size = 0
    placed: list[tuple[int, int, int]] = []
    for msg in read_topic(settings, topic, timeout=600):
        placed.append((msg.partition(), msg.offset(), msg.timestamp()[1]))
        size += len(msg.value() or b"")
    placed.sort()
    for p, off, ts in placed:
        rows = loaded.by_partition.setdefault(p, [])
        if not rows:
            loaded.base[p] = off
        rows.append(Expected(ts, "?", 0))
    loaded.records = len(placed)
    loaded.bytes_mean = size / len(placed) if placed else 0.0
    return loaded
