"""`ops replay`: send dead letters back through the pipeline once their cause is fixed.

A replayed record is the original input record again: its key and value byte for byte, its
headers without the ones the pipeline added on the way to the failure topic (`error.*`,
`source.*`, `failed_at`: the dataflow drops incoming headers of those names anyway, and
other consumers of the input topic should not see a stale error on a record that may now
succeed), plus `replay.of: <failure topic>:<partition>:<offset>`, which points at the dead
letter where those headers are kept and lets anyone tell replays apart. A `replay.of` from
an earlier replay is replaced. The partition follows from the key, as for any producer, and
the timestamp is the time of the replay (an old timestamp could fall to time retention at
once).

Selection is by `error.code`, by the dead letter's own Kafka timestamp (the time it was
dead-lettered, within milliseconds of its `failed_at` header; chosen because Kafka's time
index finds where to start without reading the topic from the beginning) and by offsets of
the failure topic (`ops/replay_rules.py`). What was replayed is kept in a table of the
history keyspace that every operator's run shares (`ops/replay_state.py` for the document,
`ops/replay_store.py` for the table and the lease that lets one run at a time write it,
`ops/replay_setup.py` for where a run starts from). A target is refused by name and by
what it holds (`ops/replay_target.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

from confluent_kafka import Consumer

from flows.adapters.kafka.writer import KafkaWriter
from flows.core.model import OutMessage
from flows.core.outcome import KEY_HEADER
from flows.errors import DeliveryFailed
from flows.settings import Settings
from ops import parked, replay_setup, scan, show
from ops.errors import FAILED, INTERRUPTED, OK, OpsError
from ops.progress import Progress
from ops.ranges import format_offsets, span_for, window
from ops.replay_rules import NO_CODE, REPLAY_HEADER, Selection, parse_replay_of, refuse_target, replay_headers
from ops.replay_setup import Target
from ops.replay_state import ReplayState
from ops.replay_store import DELIVERY_TIMEOUT_S, IN_FLIGHT_S, Lease, Row, Store
from ops.replay_target import refuse_output_topic
from ops.trace import format_readers

PARKED_CHUNK = 500  # dead letters per PostgreSQL query of --if-customer-exists


def n_records(n: int) -> str:
    """`1 record` or `N records`, for the report."""
    return f"{n} record" if n == 1 else f"{n} records"


@dataclass(frozen=True)
class Options:
    """One run of `ops replay`: the selection, the target (default: the input topic) and how it
    runs (dry run, limit, chunk size, where a legacy state file may be, restart, progress)."""

    selection: Selection
    target: str | None = None
    dry_run: bool = False
    limit: int | None = None
    chunk_size: int = 500
    legacy_dir: Path | None = None  # where a state file of an earlier version may be (default .ops-state)
    restart: bool = False
    progress: bool = True
    # only dead letters whose customer_id is in PostgreSQL now (parked customer_not_found
    # records whose customer arrived); the others stay parked for a later run
    if_customer_exists: bool = False


class StopFlag:
    """First SIGINT/SIGTERM: finish the chunk in flight, record it, stop. A second one stops
    at once; the chunk stays pending in the replay state and the next run settles it."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("ops replay: stopping after the chunk in flight (again to stop at once)", file=sys.stderr)

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]


@dataclass
class Counts:
    """What a run saw, for the report: dead letters selected and already replayed (by code), not
    selected, scanned, and refused by the target."""

    selected: Counter[str]
    already: Counter[str]
    not_selected: int = 0
    parked: int = 0  # --if-customer-exists: their customer is still missing
    scanned: int = 0
    refused: list[tuple[int, int]] = field(default_factory=list)  # the target refused them: not replayed


def run(settings: Settings, opts: Options, out: TextIO) -> int:
    """Replay the selected dead letters into the target (with `dry_run`, only count them); returns
    the exit status. The target is checked and the lease taken before anything is produced, and
    a chunk an earlier run left in flight is settled first."""
    failure = settings.failure_topic
    target = opts.target or settings.input_topic
    refuse_target(target, settings)
    scan.check_topics(settings, [failure, target])
    timeout = settings.startup_timeout_seconds
    consumer = scan.open_consumer(settings)
    try:
        refuse_output_topic(consumer, target, timeout)
        ident = Target(scan.cluster_id(consumer, timeout), failure, scan.topic_id(settings, failure, timeout), target)
        store = Store(settings)
        try:
            if opts.dry_run:
                state = replay_setup.peek(store, ident, opts.restart, opts.legacy_dir, out)
                return _dry_run(settings, opts, consumer, state, target, out)
            with store.take(ident.key) as lease:
                state = replay_setup.start(store, lease, ident, opts.restart, opts.legacy_dir, out)
                if state.pending is not None:
                    _settle(settings, opts, consumer, store, lease.row, state, target, out)
                return _replay(settings, opts, consumer, lease, state, target, out)
        finally:
            store.close()
    finally:
        consumer.close()


def _windows(consumer: Consumer, topic: str, selection: Selection, timeout: float) -> dict[int, scan.Window]:
    parts = scan.partitions(consumer, topic, timeout)
    marks = scan.watermarks(consumer, topic, parts, timeout)
    wins = {p: window(span_for(selection.spans, p), *marks[p]) for p in parts}
    if selection.since_ms is not None:
        starts = scan.offsets_at(consumer, topic, parts, selection.since_ms, timeout)
        for p, (lo, hi) in wins.items():
            first = starts.get(p)
            wins[p] = (max(lo, hi if first is None else first), hi)
    if selection.until_ms is not None:
        ends = scan.offsets_at(consumer, topic, parts, selection.until_ms, timeout)
        for p, (lo, hi) in wins.items():
            stop = ends.get(p)
            wins[p] = (lo, max(lo, hi if stop is None else min(hi, stop)))
    return wins


def _candidates(
    settings: Settings,
    opts: Options,
    consumer: Consumer,
    state: ReplayState,
    counts: Counts,
    label: str,
    stop: StopFlag | None = None,
) -> Iterator[tuple[int, int, str, OutMessage]]:
    """Dead letters that the selection takes and no earlier run replayed; ends early when
    `stop` is requested (checked per record: matches may be rare in a long scan)."""
    failure = settings.failure_topic
    target = opts.target or settings.input_topic
    wins = _windows(consumer, failure, opts.selection, settings.startup_timeout_seconds)
    progress = Progress(label, sum(hi - lo for lo, hi in wins.values()), enabled=opts.progress)
    try:
        with contextlib.closing(scan.scan(consumer, failure, wins)) as records:
            for rec in records:
                if stop is not None and stop.requested:
                    return
                counts.scanned += 1
                progress.advance()
                p, o = rec.partition, rec.offset
                code = scan.header_map(rec).get("error.code") or NO_CODE
                if not opts.selection.matches(p, o, rec.timestamp_ms, code):
                    counts.not_selected += 1
                    continue
                if state.is_replayed(p, o):
                    counts.already[code] += 1
                    continue
                counts.selected[code] += 1
                headers = replay_headers(rec.headers, rec.coordinates)
                # a dead letter keyed by its coordinates came from a record without a key
                key = None if scan.header_map(rec).get(KEY_HEADER) == "coordinates" else rec.key
                yield p, o, code, OutMessage(target, key, rec.value, headers)
    finally:
        progress.close()


def _kept(
    settings: Settings, opts: Options, counts: Counts, candidates: Iterator[tuple[int, int, str, OutMessage]]
) -> Iterator[tuple[int, int, str, OutMessage]]:
    """The candidates to replay: all of them, or with `if_customer_exists` those whose
    customer is in PostgreSQL now (asked for a chunk at a time)."""
    if not opts.if_customer_exists:
        yield from candidates
        return
    read = format_readers(settings).get(settings.failure_topic)
    with parked.customers(settings) as lookup:
        for chunk in parked.chunks(candidates, PARKED_CHUNK):
            ids = [parked.customer_id(m.value, read.read if read else None) for _, _, _, m in chunk]
            found = lookup.fetch(sorted({i for i in ids if i is not None}))
            for item, cid in zip(chunk, ids, strict=True):
                if cid in found:
                    yield item
                else:
                    counts.selected[item[2]] -= 1
                    counts.parked += 1


def _dry_run(
    settings: Settings, opts: Options, consumer: Consumer, state: ReplayState, target: str, out: TextIO
) -> int:
    counts = Counts(Counter(), Counter())
    for _ in _kept(
        settings, opts, counts, _candidates(settings, opts, consumer, state, counts, "replay --dry-run: scanned")
    ):
        pass
    total = sum(counts.selected.values())
    print(f"dry run: would replay {n_records(total)} from {settings.failure_topic} to {target}", file=out)
    _report(counts, state, out)
    if state.pending is not None:
        print(
            f"an earlier run stopped with {n_records(len(state.pending))} in flight; a real run first checks "
            f"{target} for them",
            file=out,
        )
    return OK


def _replay(
    settings: Settings, opts: Options, consumer: Consumer, lease: Lease, state: ReplayState, target: str, out: TextIO
) -> int:
    counts = Counts(Counter(), Counter())
    produced: Counter[str] = Counter()
    # the replay's records must be delivered (or given up on) well within its lease:
    # ops.replay_store, on why a chunk can't still be arriving when another run takes over
    writer = KafkaWriter(
        dataclasses.replace(settings, retry_deadline_seconds=min(settings.retry_deadline_seconds, DELIVERY_TIMEOUT_S)),
        client_id="enrichment-ops-replay",
    )
    chunk: list[tuple[int, int, str, OutMessage]] = []

    def flush() -> None:
        if not chunk:
            return
        lease.ensure()
        state.begin(((p, o) for p, o, _, _ in chunk), int(time.time() * 1000))
        try:
            refused = set(writer.write([m for _, _, _, m in chunk]))
        except DeliveryFailed as exc:
            raise OpsError(
                f"{exc}; {sum(produced.values())} records replayed before this chunk; run the same "
                "command again to check the chunk in flight and continue",
                FAILED,
            ) from None
        if refused:  # too large for the target, or invalid there: not replayed, and said so below
            counts.refused.extend((p, o) for i, (p, o, _, _) in enumerate(chunk) if i in refused)
            state.commit([(p, o) for i, (p, o, _, _) in enumerate(chunk) if i not in refused])
        else:
            state.commit()
        produced.update(code for i, (_, _, code, _) in enumerate(chunk) if i not in refused)
        chunk.clear()

    stopped = ""
    try:
        with StopFlag() as stop:
            candidates = _candidates(settings, opts, consumer, state, counts, "replay: scanned", stop)
            for item in _kept(settings, opts, counts, candidates):
                chunk.append(item)
                done = sum(produced.values()) + len(counts.refused) + len(chunk)
                limit_hit = opts.limit is not None and done >= opts.limit
                if len(chunk) >= opts.chunk_size or limit_hit or stop.requested:
                    flush()
                if limit_hit:
                    stopped = f"stopped after {n_records(done)} (--limit); run again to continue"
                    break
            flush()
            if stop.requested and not stopped:
                stopped = "interrupted"
    finally:
        writer.close()
    counts.selected = produced
    print(f"replayed {n_records(sum(produced.values()))} from {settings.failure_topic} to {target}", file=out)
    _report(counts, state, out, partial=bool(stopped))
    if stopped == "interrupted":
        print(
            "ops replay: interrupted; the replay state records what was replayed: run the same command again "
            "to continue",
            file=sys.stderr,
        )
        return INTERRUPTED
    if stopped:
        print(stopped, file=out)
    if counts.refused:
        print(
            f"ops replay: {target} refused {n_records(len(counts.refused))} (too large for it, or invalid "
            "there); they are not recorded as replayed: see the report",
            file=sys.stderr,
        )
        return FAILED
    return OK


def _report(counts: Counts, state: ReplayState, out: TextIO, partial: bool = False) -> None:
    # error.code is whatever the dead letter's header holds: printed escaped (ops.show)
    for code, n in sorted(counts.selected.items()):
        print(f"  {show.text(code):<24}{n:>9}", file=out)
    already = sum(counts.already.values())
    if already:
        detail = ", ".join(f"{show.text(c)} {n}" for c, n in sorted(counts.already.items()))
        print(f"skipped, replayed by an earlier run: {already} ({detail})", file=out)
    scanned = "scanned so far" if partial else "scanned"
    print(f"not selected: {counts.not_selected} of {counts.scanned} dead letters {scanned}", file=out)
    if counts.parked:
        print(f"still parked, their customer_id not in PostgreSQL yet: {counts.parked}", file=out)
    if counts.refused:
        by_partition: dict[int, list[int]] = {}
        for p, o in counts.refused:
            by_partition.setdefault(p, []).append(o)
        where = "; ".join(f"partition {p}: {format_offsets(offs)}" for p, offs in sorted(by_partition.items()))
        print(f"refused by {state.target_topic}, not replayed: {len(counts.refused)} ({where})", file=out)
    print(
        f"replay state: {state.cluster}, {state.failure_topic} -> {state.target_topic} "
        f"({state.count()} dead letters replayed in all)",
        file=out,
    )


def _settle(
    settings: Settings,
    opts: Options,
    consumer: Consumer,
    store: Store,
    row: Row,
    state: ReplayState,
    target: str,
    out: TextIO,
) -> None:
    """An earlier run stopped with a chunk in flight: look for it in the target topic, once
    none of it can still be on its way (`ops.replay_store`)."""
    pending = state.pending
    assert pending is not None
    if replay_setup.had_pending(row) and row.state_written_ms is not None:
        wait_s = IN_FLIGHT_S - (store.server_now_ms() - row.state_written_ms) / 1000
        if wait_s > 0:
            print(
                f"ops replay: an earlier run left {n_records(len(pending))} in flight {IN_FLIGHT_S - wait_s:.0f}s "
                f"ago; waiting {wait_s:.0f}s until none of it can still be arriving",
                file=sys.stderr,
            )
            time.sleep(wait_s)
    timeout = settings.startup_timeout_seconds
    parts = scan.partitions(consumer, target, timeout)
    marks = scan.watermarks(consumer, target, parts, timeout)
    starts = scan.offsets_at(consumer, target, parts, pending.since_ms, timeout)
    wins = {}
    for p, (lo, hi) in marks.items():
        first = starts.get(p)
        wins[p] = (hi if first is None else max(lo, first), hi)
    progress = Progress(
        f"replay: looking for {len(pending)} records in flight in {target}",
        sum(hi - lo for lo, hi in wins.values()),
        enabled=opts.progress,
    )
    found: list[tuple[int, int]] = []
    try:
        with contextlib.closing(scan.scan(consumer, target, wins)) as records:
            for rec in records:
                progress.advance()
                ref = parse_replay_of(scan.header_map(rec).get(REPLAY_HEADER))
                if ref is not None and ref[0] == settings.failure_topic:
                    found.append((ref[1], ref[2]))
    finally:
        progress.close()
    total = len(pending)
    in_flight = {(p, o) for p, o in found if p in pending.offsets and o in pending.offsets[p]}
    state.commit(in_flight)
    print(
        f"an earlier run stopped with {n_records(total)} in flight: {len(in_flight)} had reached {target}, "
        f"{total - len(in_flight)} had not (they are replayed now if selected)",
        file=out,
    )


def follow(settings: Settings, opts: Options, out: TextIO, interval_s: float, settle_s: float) -> int:
    """`--follow`: a run now, then one whenever PostgreSQL announces a customer change (the
    change trigger of `ops migrate install`) or `interval_s` passes, `settle_s` after it (the
    dataflow's caches hear of the change first), until SIGINT/SIGTERM. A run that replayed
    nothing prints nothing; each dead letter still goes back once (the replay state). A
    signal ends it with status 0, after the chunk in flight of a round."""
    wake = parked.Wakeups(settings)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            report = io.StringIO()
            status = run(settings, opts, report)
            text = report.getvalue()
            if status != OK or not text.startswith("replayed 0 records"):
                out.write(text)
                out.flush()
            if status == INTERRUPTED:  # stopped during a round, its chunk finished and recorded
                return OK
            if status != OK:
                return status
            wake.wait(interval_s, stop)
            if stop.is_set() or stop.wait(settle_s):
                return OK
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        wake.close()
