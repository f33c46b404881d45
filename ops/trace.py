"""`ops trace`: follow one record from its history rows to the message it became.

By `event_id`: the history table's partition key, one cheap query. By `--source
topic:partition:offset`: the history table cannot be asked by coordinates without
ALLOW FILTERING (a scan of the whole table), so the input record is read from Kafka and its
`event_id` worked out with the dataflow's own decoder: the `event_id` of the JSON, or the
coordinates for a record whose `event_id` can't be read (the contract's fallback). Only
when the input record is gone (retention) does `--full-scan` fall back to ALLOW FILTERING.

The output message is found by its `source.*` headers in the topic the row names, reading
only the slice of it written around the row's `processed_at` (Kafka's time index finds it).

Everything printed that came from a record (key, value, headers, the history columns
copied from it) goes through `ops.show`: control characters, bidi overrides and bytes
that are not UTF-8 are printed as escapes, so a record can't rewrite the operator's
screen or forge lines of the report.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, TopicPartition

from flows.adapters.registry.client import registry_client
from flows.adapters.registry.readers import FramedReader
from flows.adapters.scylla.session import COLUMNS, TABLE
from flows.core.decode import Unreadable, decode_framed, decode_record
from flows.core.model import Decoded, SourceRecord
from flows.retry import Retries
from flows.settings import Settings
from ops import scan, show
from ops.cql import open_session
from ops.errors import FOUND_GAPS, OK, USAGE, OpsError
from ops.progress import Progress
from ops.ranges import format_ms

# output timestamps come from the dataflow's clock, like processed_at; a little slack
# covers LogAppendTime topics (the broker's clock)
BEFORE_MS = 10_000
VALUE_PREVIEW = show.PREVIEW_CHARS


@dataclass(frozen=True)
class Source:
    """An input record's coordinates, as `--source` takes them and reports print them."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


def parse_source(text: str) -> Source:
    """`topic:partition:offset`; topic names never contain ':'."""
    parts = text.strip().rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise ValueError(f"{text!r} is not TOPIC:PARTITION:OFFSET")
    try:
        partition, offset = int(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(f"{text!r}: partition and offset must be integers") from None
    if partition < 0 or offset < 0:
        raise ValueError(f"{text!r}: partition and offset must not be negative")
    return Source(parts[0], partition, offset)


@dataclass(frozen=True)
class Options:
    """What `ops trace` looks up (an `event_id` or `--source`) and how: the search window, whole
    values, a full scan, progress."""

    event_id: str | None = None
    source: Source | None = None
    window_s: float = 300.0
    full: bool = False
    full_scan: bool = False
    progress: bool = True


def show_bytes(data: bytes | None, limit: int | None = VALUE_PREVIEW) -> str:
    """Record bytes as printable text (`ops.show`), cut at `limit` characters."""
    return show.preview(data, limit)


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    """The driver returns naive datetimes that are UTC."""
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _text(value: Any, limit: int | None = None) -> str:
    """A history column as printable text: its text fields hold what the record held."""
    if isinstance(value, dt.datetime):
        moment = _utc(value)
        assert moment is not None
        return format_ms(int(moment.timestamp() * 1000))
    if value is None:
        return "null"
    return show.text_preview(value if isinstance(value, str) else str(value), limit)


class History:
    """Read access to `event_history`, with prepared statements."""

    def __init__(self, settings: Settings) -> None:
        self.table = f"{settings.scylla_keyspace}.{TABLE}"  # keyspace validated by Settings
        self.cluster, self.session = open_session(settings)
        cols = ", ".join(COLUMNS)
        try:
            # identifiers only (the keyspace is validated by Settings); values are bound
            self.by_id = self.session.prepare(f"SELECT {cols} FROM {self.table} WHERE event_id = ?")  # noqa: S608
        except Exception as exc:
            self.cluster.shutdown()
            raise OpsError(f"history table {self.table}: {str(exc)[:300]}", USAGE) from None
        self._cols = cols

    def rows(self, event_id: str) -> list[dict[str, Any]]:
        """Every history row filed under `event_id`: one query on the partition key."""
        return [dict(zip(COLUMNS, r, strict=True)) for r in self.session.execute(self.by_id, (event_id,))]

    def rows_at(self, source: Source) -> list[dict[str, Any]]:
        """Every row with these coordinates: a scan of the whole table (ALLOW FILTERING)."""
        stmt = self.session.prepare(
            f"SELECT {self._cols} FROM {self.table} WHERE source_topic = ? AND "  # noqa: S608
            "source_partition = ? AND source_offset = ? ALLOW FILTERING"
        )
        result = self.session.execute(stmt, (source.topic, source.partition, source.offset), timeout=120)
        return [dict(zip(COLUMNS, r, strict=True)) for r in result]

    def close(self) -> None:
        """Shut down the connection to the cluster."""
        self.cluster.shutdown()


def read_one(consumer: Consumer, source: Source, timeout: float) -> SourceRecord | None:
    """The record at exactly these coordinates, or None when the partition no longer (or
    not yet) holds it."""
    lo, hi = consumer.get_watermark_offsets(TopicPartition(source.topic, source.partition), timeout=timeout)
    if not lo <= source.offset < hi:
        return None
    consumer.assign([TopicPartition(source.topic, source.partition, source.offset)])
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    return None
                continue
            return scan.record(msg) if msg.offset() == source.offset else None
        return None
    finally:
        consumer.unassign()


def event_id_of(
    record: SourceRecord, max_value_bytes: int, read: Callable[[bytes], bytes] | None = None
) -> tuple[str, bool]:
    """The `event_id` the dataflow files this record under, and whether it came from the value
    (`read`: INPUT_FORMAT's reader, for a Schema Registry format)."""
    result = decode_record(record, max_value_bytes) if read is None else decode_framed(record, max_value_bytes, read)
    if isinstance(result, Decoded):
        return result.event.event_id, True
    if result.event_id:
        return result.event_id, True
    return record.coordinates, False


def find_output(
    consumer: Consumer, row: dict[str, Any], window_s: float, timeout: float, progress: bool
) -> tuple[SourceRecord | None, str]:
    """The message with this row's `source.*` headers in its output topic, looked for from a
    little before `processed_at` to `window_s` after it; (None, why) if absent."""
    topic = row["output_topic"]
    processed = _utc(row["processed_at"])
    if not topic or processed is None:
        return None, "the row names no output topic"
    try:
        parts = scan.partitions(consumer, topic, timeout)
    except OpsError:
        return None, f"topic {show.text(topic)} does not exist"
    at_ms = int(processed.timestamp() * 1000)
    first_ms, last_ms = at_ms - BEFORE_MS, at_ms + int(window_s * 1000)
    marks = scan.watermarks(consumer, topic, parts, timeout)
    starts = scan.offsets_at(consumer, topic, parts, first_ms, timeout)
    ends = scan.offsets_at(consumer, topic, parts, last_ms, timeout)
    wins: dict[int, scan.Window] = {}
    for p, (lo, hi) in marks.items():
        start, end = starts.get(p), ends.get(p)
        begin = hi if start is None else max(lo, start)
        wins[p] = (begin, max(begin, hi if end is None else min(hi, end)))
    where = f"not in {topic} between {format_ms(first_ms)} and {format_ms(last_ms)} (--window widens the search)"
    want = (str(row["source_topic"]), str(row["source_partition"]), str(row["source_offset"]))
    bar = Progress(f"trace: searching {topic}", sum(hi - lo for lo, hi in wins.values()), enabled=progress)
    try:
        with contextlib.closing(scan.scan(consumer, topic, wins)) as records:
            for rec in records:
                bar.advance()
                h = scan.header_map(rec)
                if (h.get("source.topic"), h.get("source.partition"), h.get("source.offset")) == want:
                    return rec, where
    finally:
        bar.close()
    return None, where


def print_row(row: dict[str, Any], n: int, total: int, out: TextIO, full: bool = False) -> None:
    """History row `n` of `total`: its coordinates and status, then its columns, escaped
    (`ops.show`) and cut unless `full`."""
    status = _text(row["status"]) + (f" ({_text(row['error_code'])})" if row["error_code"] else "")
    coords = f"{_text(row['source_topic'])}:{row['source_partition']}:{row['source_offset']}"
    print(f"history row {n} of {total}: {coords} -> {status}", file=out)
    limit = None if full else VALUE_PREVIEW
    for name in ("event_id", "event_type", "customer_id", "occurred_at", "processed_at", "output_topic", "payload"):
        print(f"  {name:<14}{_text(row[name], limit)}", file=out)


def print_message(rec: SourceRecord, full: bool, out: TextIO, reader: FramedReader | None = None) -> None:
    """Key, headers and value, every one escaped (`ops.show`) and cut unless `full`; with a
    `reader` (a Schema Registry format), the value as JSON too."""
    limit = None if full else VALUE_PREVIEW
    print(f"  output record {rec.coordinates} at {format_ms(rec.timestamp_ms)}", file=out)
    print(f"    key     {show_bytes(rec.key, limit)}", file=out)
    escaped = rec.header_error is not None
    for name, value in rec.headers:
        print(f"    header  {show.header_name(name, escaped)}: {show_bytes(value, limit)}", file=out)
    if escaped:
        print("    (a header name is not UTF-8: such names are shown with \\xNN for each byte that is not)", file=out)
    print(f"    value   {show_bytes(rec.value, limit)}", file=out)
    if reader is not None and rec.value:
        try:
            as_json = reader.read(rec.value).decode()
        except Unreadable as exc:
            print(f"    ({reader.fmt}: {show.text(exc.message)})", file=out)
        else:
            print(f"    as JSON {show.text_preview(as_json, limit)} ({reader.fmt})", file=out)


def run(settings: Settings, opts: Options, out: TextIO) -> int:
    """Print the history rows of the event (or of the record at `--source`) and the output record of
    each; status 1 when there is no row or an output record is not found."""
    scan.check_topics(settings, [opts.source.topic] if opts.source else [])
    timeout = settings.startup_timeout_seconds
    history = History(settings)
    consumer = scan.open_consumer(settings)
    readers = format_readers(settings)
    try:
        if opts.source is not None:
            rows = _rows_for_source(settings, opts, history, consumer, out, readers.get(settings.input_topic))
        else:
            assert opts.event_id is not None
            rows = history.rows(opts.event_id)
            if not rows:
                print(f"no history row for event_id '{show.text(opts.event_id)}' in {history.table}", file=out)
        if not rows:
            return FOUND_GAPS
        missing = 0
        for n, row in enumerate(rows, 1):
            print_row(row, n, len(rows), out, opts.full)
            found, where = find_output(consumer, row, opts.window_s, timeout, opts.progress)
            if found is None:
                missing += 1
                print(f"  output record not found: {where}", file=out)
            else:
                print_message(found, opts.full, out, readers.get(found.topic))
        return OK if not missing else FOUND_GAPS
    finally:
        consumer.close()
        history.close()


def format_readers(settings: Settings) -> dict[str, FramedReader]:
    """By topic, the reader of a Schema Registry format its values are in: the input's and the
    failure topic's (dead letters keep the input's bytes) in INPUT_FORMAT, the output's in
    OUTPUT_FORMAT."""
    s = settings
    readers: dict[str, FramedReader] = {}
    retries = Retries(s.startup_timeout_seconds)
    if s.input_format != "json":
        reader = FramedReader(s.input_format, registry_client(s), s.input_topic, retries)
        readers[s.input_topic] = readers[s.failure_topic] = reader
    if s.output_format != "json":
        readers[s.output_topic] = FramedReader(s.output_format, registry_client(s), s.output_topic, retries)
    return readers


def _rows_for_source(
    settings: Settings,
    opts: Options,
    history: History,
    consumer: Consumer,
    out: TextIO,
    reader: FramedReader | None = None,
) -> list[dict[str, Any]]:
    source = opts.source
    assert source is not None
    rec = read_one(consumer, source, settings.startup_timeout_seconds)
    if rec is not None:
        # the record as the dataflow's source builds it, header_error included: a record
        # with a header name that is not UTF-8 fails before its event_id is read
        record = SourceRecord(
            source.topic,
            source.partition,
            source.offset,
            rec.timestamp_ms,
            rec.key,
            rec.value,
            rec.headers,
            rec.header_error,
        )
        event_id, readable = event_id_of(record, settings.max_value_bytes, reader.read if reader else None)
        how = "read from its value" if readable else "its event_id can't be read: filed under its coordinates"
        print(
            f"input record {source} at {format_ms(rec.timestamp_ms)}: event_id {show.text(event_id)} ({how})", file=out
        )
        candidates = [event_id]
    else:
        print(f"input record {source} is not in Kafka (deleted by retention, or not written yet)", file=out)
        candidates = [str(source)]  # the fallback id, for records whose event_id could not be read
    rows = [r for eid in candidates for r in history.rows(eid)]
    others = [
        r
        for r in rows
        if (r["source_topic"], r["source_partition"], r["source_offset"])
        != (source.topic, source.partition, source.offset)
    ]
    rows = [r for r in rows if r not in others]
    if others:
        print(
            f"({len(others)} other history rows share this event_id: `ops trace {show.text(candidates[0])}` "
            "shows them)",
            file=out,
        )
    if not rows and rec is None:
        if opts.full_scan:
            print(f"searching {history.table} for the coordinates (ALLOW FILTERING: reads the whole table)", file=out)
            rows = history.rows_at(source)
        else:
            print("no history row under the fallback event_id; --full-scan searches the whole history table", file=out)
    elif not rows:
        print(f"no history row for {source} in {history.table}: not processed yet?", file=out)
    return rows
