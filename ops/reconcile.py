"""`ops reconcile`: did every input record come out, exactly once, in the success or the
failure topic? (The contract's accounting, checked from outside.)

Input offsets are read, not assumed: transaction markers and compaction leave offsets
without a record. Outputs are matched by their `source.topic/partition/offset` headers;
outputs of other input topics are ignored, so shared output topics work. The output
topics are read from a little before the earliest input record of the range (an output is
written after its input), so checking a recent range does not read them from the start.

Missing records make the exit status 1. Duplicates are listed but do not: the contract
allows them after a crash and restart (consumers deduplicate by the `source.*` headers).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TextIO

from confluent_kafka import Consumer

from flows.settings import Settings
from ops import scan
from ops.errors import FOUND_GAPS, OK
from ops.progress import Progress
from ops.ranges import OffsetSpan, format_ranges, span_for, to_ranges, window

DEFAULT_SKEW_S = 3600.0


class Tally:
    """One input partition's window [start, end): which offsets hold a record and how many
    outputs name each. A byte per offset keeps a range of millions in a few megabytes."""

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.present = bytearray(end - start)
        self.outputs = bytearray(end - start)
        self.inputs = 0
        self.by_topic: dict[str, int] = {}
        self.last_output = -1

    def add_input(self, offset: int) -> None:
        """Note that `offset` holds an input record; outside the window, or seen already: ignored."""
        if self.start <= offset < self.end and not self.present[offset - self.start]:
            self.present[offset - self.start] = 1
            self.inputs += 1

    def add_output(self, offset: int, topic: str) -> bool:
        """Count one output naming `offset`; False when the offset is outside the window."""
        if not self.start <= offset < self.end:
            return False
        i = offset - self.start
        self.outputs[i] = min(255, self.outputs[i] + 1)
        self.by_topic[topic] = self.by_topic.get(topic, 0) + 1
        self.last_output = max(self.last_output, offset)
        return True

    def missing(self) -> list[tuple[int, int]]:
        """Inclusive ranges of the input records that no output names."""
        return to_ranges(
            self.start + i for i, (p, n) in enumerate(zip(self.present, self.outputs, strict=True)) if p and not n
        )

    def duplicated(self) -> list[tuple[int, int]]:
        """Inclusive ranges of the offsets that more than one output names."""
        return to_ranges(self.start + i for i, n in enumerate(self.outputs) if n > 1)

    def unknown(self) -> int:
        """Outputs naming an offset in the window that holds no input record (deleted or
        compacted input, or a bad header)."""
        return sum(n for p, n in zip(self.present, self.outputs, strict=True) if n and not p)


@dataclass(frozen=True)
class Options:
    """What a reconcile checks: input offset ranges, how long before the earliest input record the
    outputs are read from, and whether progress is shown."""

    spans: tuple[OffsetSpan, ...] = ()
    skew_s: float = DEFAULT_SKEW_S
    progress: bool = True


@dataclass
class Report:
    """What a reconcile found: a tally per input partition, and how many outputs name no record of
    the input topic."""

    input_topic: str
    output_topics: tuple[str, ...]
    tallies: dict[int, Tally] = field(default_factory=dict)
    foreign: int = 0  # outputs of other input topics, or without source headers

    def missing_count(self) -> int:
        """Input records without any output, over all partitions."""
        return sum(b - a + 1 for t in self.tallies.values() for a, b in t.missing())


def run(settings: Settings, opts: Options, out: TextIO) -> int:
    """Reconcile the input topic against both output topics and print the report; status 1 when
    any input record has no output."""
    topics = (settings.output_topic, settings.failure_topic)
    scan.check_topics(settings, [settings.input_topic, *topics])
    consumer = scan.open_consumer(settings)
    try:
        report = collect(settings, opts, consumer)
    finally:
        consumer.close()
    return FOUND_GAPS if print_report(report, out) else OK


def collect(settings: Settings, opts: Options, consumer: Consumer) -> Report:
    """The tallies: the input partitions' windows first, then the output topics from `skew_s`
    before the earliest input record. With no input record in range, the outputs are not read."""
    timeout = settings.startup_timeout_seconds
    source = settings.input_topic
    report = Report(source, (settings.output_topic, settings.failure_topic))
    parts = scan.partitions(consumer, source, timeout)
    marks = scan.watermarks(consumer, source, parts, timeout)
    wins = {p: window(span_for(opts.spans, p), *marks[p]) for p in parts}
    report.tallies = {p: Tally(lo, hi) for p, (lo, hi) in wins.items() if span_for(opts.spans, p) is not None}
    earliest: int | None = None
    bar = Progress(f"reconcile: reading {source}", sum(hi - lo for lo, hi in wins.values()), enabled=opts.progress)
    try:
        with contextlib.closing(scan.scan(consumer, source, wins)) as records:
            for rec in records:
                bar.advance()
                report.tallies[rec.partition].add_input(rec.offset)
                ts = rec.timestamp_ms
                if ts >= 0 and (earliest is None or ts < earliest):
                    earliest = ts
    finally:
        bar.close()
    if not any(t.inputs for t in report.tallies.values()):
        return report
    for topic in report.output_topics:
        _read_outputs(consumer, topic, report, earliest, opts, timeout)
    return report


def _read_outputs(
    consumer: Consumer, topic: str, report: Report, earliest: int | None, opts: Options, timeout: float
) -> None:
    parts = scan.partitions(consumer, topic, timeout)
    marks = scan.watermarks(consumer, topic, parts, timeout)
    wins = dict(marks)
    if earliest is not None:
        starts = scan.offsets_at(consumer, topic, parts, earliest - int(opts.skew_s * 1000), timeout)
        for p, (lo, hi) in marks.items():
            first = starts.get(p)
            wins[p] = (hi if first is None else max(lo, first), hi)
    bar = Progress(f"reconcile: reading {topic}", sum(hi - lo for lo, hi in wins.values()), enabled=opts.progress)
    try:
        with contextlib.closing(scan.scan(consumer, topic, wins)) as records:
            for rec in records:
                bar.advance()
                h = scan.header_map(rec)
                if h.get("source.topic") != report.input_topic:
                    report.foreign += 1
                    continue
                try:
                    p, o = int(h.get("source.partition", "")), int(h.get("source.offset", ""))
                except ValueError:
                    report.foreign += 1
                    continue
                tally = report.tallies.get(p)
                if tally is not None:
                    tally.add_output(o, topic)
    finally:
        bar.close()


def print_report(report: Report, out: TextIO) -> int:
    """The table, then the missing and duplicated offsets as ranges; returns the number missing."""
    ok_topic, failed_topic = report.output_topics
    print(f"reconcile {report.input_topic} against {ok_topic} + {failed_topic}", file=out)
    head = ("partition", "offsets", "input", "enriched", "failed", "missing", "duplicated")
    print("{:>9}  {:>17}  {:>9}  {:>9}  {:>9}  {:>9}  {:>10}".format(*head), file=out)
    sums = [0, 0, 0, 0, 0]
    missing: dict[int, list[tuple[int, int]]] = {}
    dups: dict[int, list[tuple[int, int]]] = {}
    for p, t in sorted(report.tallies.items()):
        missing[p], dups[p] = t.missing(), t.duplicated()
        row = [
            t.inputs,
            t.by_topic.get(ok_topic, 0),
            t.by_topic.get(failed_topic, 0),
            sum(b - a + 1 for a, b in missing[p]),
            sum(b - a + 1 for a, b in dups[p]),
        ]
        sums = [a + b for a, b in zip(sums, row, strict=True)]
        span = f"{t.start}-{t.end - 1}" if t.end > t.start else "empty"
        print(f"{p:>9}  {span:>17}  " + "  ".join(f"{n:>9}" for n in row[:4]) + f"  {row[4]:>10}", file=out)
    print(f"{'total':>9}  {'':>17}  " + "  ".join(f"{n:>9}" for n in sums[:4]) + f"  {sums[4]:>10}", file=out)
    if sums[3]:
        print(f"missing: {sums[3]} input records have no output", file=out)
        for p, ranges in missing.items():
            if not ranges:
                continue
            hint = ""
            if ranges[0][0] > report.tallies[p].last_output:
                hint = "  (all after the last output seen: the dataflow may not have got to them yet)"
            print(f"  partition {p}: {format_ranges(ranges)}{hint}", file=out)
    else:
        print("missing: none", file=out)
    if sums[4]:
        print(f"duplicated: {sums[4]} input records have more than one output (allowed after a restart)", file=out)
        for p, ranges in dups.items():
            if ranges:
                print(f"  partition {p}: {format_ranges(ranges)}", file=out)
    else:
        print("duplicated: none", file=out)
    if report.foreign:
        print(f"outputs of other input topics (or without source headers), ignored: {report.foreign}", file=out)
    unknown = sum(t.unknown() for t in report.tallies.values())
    if unknown:
        print(f"outputs naming offsets that hold no input record (deleted input?): {unknown}", file=out)
    return sums[3]
