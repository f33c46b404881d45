"""The pure parts of the operator tools: argument parsing, offset ranges, times, selection,
replay headers and state, reconcile tallies and report, progress display."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import signal
from pathlib import Path

import pytest

from flows.core.model import SourceRecord
from ops import cli
from ops.errors import USAGE, OpsError
from ops.progress import Progress
from ops.ranges import (
    OffsetSpan,
    RangeSet,
    check_spans,
    format_ms,
    format_offsets,
    format_ranges,
    parse_span,
    parse_time,
    span_for,
    to_ranges,
    window,
)
from ops.reconcile import Report, Tally, print_report
from ops.replay import StopFlag
from ops.replay_rules import Selection, output_marks, parse_codes, parse_replay_of, refuse_target, replay_headers
from ops.replay_state import ReplayState, legacy_path, load_legacy
from ops.trace import event_id_of, parse_source, show_bytes

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
NOW_MS = int(NOW.timestamp() * 1000)


# --- offset ranges


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("0:100-200", OffsetSpan(0, 100, 200)),
        ("2:100-", OffsetSpan(2, 100, None)),
        ("1:-50", OffsetSpan(1, None, 50)),
        ("3:7", OffsetSpan(3, 7, 7)),
        ("10-20", OffsetSpan(None, 10, 20)),
        ("5", OffsetSpan(None, 5, 5)),
        ("-9", OffsetSpan(None, None, 9)),
    ],
)
def test_parse_span(text: str, span: OffsetSpan) -> None:
    assert parse_span(text) == span


@pytest.mark.parametrize("text", ["", "-", "0:", "a-b", "1:2:3", "0:5-3", "1.5", "0:-"])
def test_parse_span_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_span(text)


def test_check_spans_one_per_partition() -> None:
    check_spans([parse_span("0:1-2"), parse_span("1:1-2"), parse_span("5-9")])
    with pytest.raises(ValueError, match="partition 0"):
        check_spans([parse_span("0:1-2"), parse_span("0:5-")])
    with pytest.raises(ValueError, match="every partition"):
        check_spans([parse_span("1-2"), parse_span("5-")])


def test_span_for_and_window() -> None:
    spans = (parse_span("0:10-19"), parse_span("100-"))
    assert span_for((), 4) == OffsetSpan(None, None, None)
    assert span_for(spans, 0) == OffsetSpan(0, 10, 19)
    assert span_for(spans, 1) == OffsetSpan(None, 100, None)
    assert span_for((parse_span("0:1-2"),), 1) is None
    # clipped to what the partition holds: [low, high)
    assert window(OffsetSpan(0, 10, 19), 0, 50) == (10, 20)
    assert window(OffsetSpan(0, 10, 19), 15, 17) == (15, 17)
    assert window(OffsetSpan(None, None, None), 3, 8) == (3, 8)
    assert window(OffsetSpan(0, 60, 70), 0, 50) == (60, 60)
    assert window(None, 0, 50) == (50, 50)


def test_ranges_are_merged_and_inclusive() -> None:
    assert to_ranges([9, 1, 2, 3, 3, 7, 10, 11]) == [(1, 3), (7, 7), (9, 11)]
    assert format_ranges([(0, 4), (7, 7), (9, 12)]) == "0-4, 7, 9-12"
    assert format_offsets([]) == ""
    assert format_offsets([5, 4, 6, 8]) == "4-6, 8"


def test_range_set_add_merge_contains() -> None:
    rs = RangeSet()
    for off in (5, 7, 6, 1, 2, 10):
        rs.add(off)
    assert rs.ranges() == [(1, 2), (5, 7), (10, 10)]
    assert 6 in rs and 10 in rs and 3 not in rs and 11 not in rs and 0 not in rs
    assert len(rs) == 6
    rs.add(3)
    rs.add(4)
    assert rs.ranges() == [(1, 7), (10, 10)]
    rs.update(RangeSet([[8, 9], [20, 25]]))
    assert rs.ranges() == [(1, 10), (20, 25)]
    # loading overlapping or adjacent ranges in any order merges them
    assert RangeSet([[5, 9], [0, 2], [3, 4], [8, 12]]).ranges() == [(0, 12)]
    assert not RangeSet()


# --- times


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T10:00:00Z", NOW_MS - 2 * 3600_000),
        ("2026-03-01T12:00:00+02:00", NOW_MS - 2 * 3600_000),
        ("2026-03-01", NOW_MS - 12 * 3600_000),
        ("90s", NOW_MS - 90_000),
        ("15m", NOW_MS - 15 * 60_000),
        ("2h", NOW_MS - 2 * 3600_000),
        ("1d", NOW_MS - 86400_000),
        ("1767225600000", 1767225600000),
    ],
)
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time(text, NOW) == expected


def test_parse_time_refuses_naive_and_garbage() -> None:
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_time("2026-03-01T10:00:00", NOW)
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday", NOW)


def test_format_ms_is_rfc3339_utc() -> None:
    assert format_ms(NOW_MS + 5) == "2026-03-01T12:00:00.005Z"


# --- replay selection and headers


def test_selection_by_code_time_and_offsets() -> None:
    everything = Selection()
    assert everything.matches(0, 5, NOW_MS, "invalid_json")
    by_code = Selection(codes=frozenset({"customer_not_found"}))
    assert by_code.matches(1, 1, 0, "customer_not_found")
    assert not by_code.matches(1, 1, 0, "invalid_json")
    by_time = Selection(since_ms=100, until_ms=200)
    assert by_time.matches(0, 0, 100, "x") and by_time.matches(0, 0, 199, "x")
    assert not by_time.matches(0, 0, 99, "x") and not by_time.matches(0, 0, 200, "x")
    by_offset = Selection(spans=(parse_span("0:10-20"),))
    assert by_offset.matches(0, 10, 0, "x") and by_offset.matches(0, 20, 0, "x")
    assert not by_offset.matches(0, 21, 0, "x") and not by_offset.matches(1, 15, 0, "x")


def test_parse_codes() -> None:
    assert parse_codes(["customer_not_found", "invalid_json, empty_value"]) == {
        "customer_not_found",
        "invalid_json",
        "empty_value",
    }
    assert parse_codes([]) == frozenset()
    with pytest.raises(ValueError, match="unknown error code 'not_a_code'"):
        parse_codes(["customer_not_found,not_a_code"])


def test_replay_headers_restore_the_input_headers_and_mark_the_replay() -> None:
    failed = [
        ("trace-id", b"t-1"),
        ("error.code", b"customer_not_found"),
        ("error.stage", b"enrich"),
        ("error.message", b"no customer"),
        ("error.field", b"$.customer_id"),
        ("source.topic", b"events"),
        ("source.partition", b"0"),
        ("source.offset", b"7"),
        ("source.timestamp", b"1"),
        ("failed_at", b"2026-01-01T00:00:00.000Z"),
        ("replay.of", b"events.failed:0:1"),
        ("x", b"2"),
    ]
    assert replay_headers(failed, "events.failed:2:9") == [
        ("trace-id", b"t-1"),
        ("x", b"2"),
        ("replay.of", b"events.failed:2:9"),
    ]
    assert replay_headers(None, "f:0:0") == [("replay.of", b"f:0:0")]
    assert replay_headers([("empty", None)], "f:0:0") == [("empty", None), ("replay.of", b"f:0:0")]


def test_parse_replay_of() -> None:
    assert parse_replay_of("events.failed:2:9") == ("events.failed", 2, 9)
    assert parse_replay_of(None) is None
    assert parse_replay_of("nonsense") is None
    assert parse_replay_of("t:x:1") is None


def test_output_marks_are_the_pipelines_headers() -> None:
    coords = [("source.topic", b"events"), ("source.partition", b"0"), ("source.offset", b"7")]
    assert output_marks(coords) == "source.topic + source.partition + source.offset"
    assert output_marks([("error.code", b"invalid_json")]) == "error.code"
    assert (
        output_marks([*coords, ("error.code", b"x")]) == "source.topic + source.partition + source.offset "
        "and error.code"
    )
    assert output_marks(coords[:2]) is None  # all three, or it is not the pipeline's
    assert output_marks([("trace-id", b"1")]) is None and output_marks([]) is None
    assert output_marks([*coords, ("replay.of", b"events.failed:0:1")]) is None  # a replay is input


def test_refuses_failure_and_output_topics() -> None:
    from flows.settings import Settings

    settings = Settings.from_env({})
    with pytest.raises(OpsError, match="refusing to replay into the failure topic events.failed") as exc:
        refuse_target("events.failed", settings)
    assert exc.value.status == USAGE
    with pytest.raises(OpsError, match="output topic"):
        refuse_target("events.enriched", settings)
    refuse_target("events", settings)
    refuse_target("events.retry", settings)


def test_stop_flag_first_signal_asks_second_one_stops(capsys: pytest.CaptureFixture[str]) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        assert "stopping after the chunk in flight" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


# --- replay state


def _empty(topic_id: str = "id-1") -> ReplayState:
    return ReplayState("cluster-a", "events.failed", topic_id, "events")


def _load(text: str, topic_id: str = "id-1") -> ReplayState:
    return ReplayState.from_json(text, "the state", "cluster-a", "events.failed", topic_id, "events", "HINT")


def test_state_round_trip_with_write_ahead_chunks() -> None:
    saved: list[str] = []
    state = _empty()
    state.save = lambda s: saved.append(s.dumps())
    state.begin([(0, 1), (0, 2), (1, 5)], NOW_MS)
    assert json.loads(saved[-1])["pending"]["offsets"] == {"0": [[1, 2]], "1": [[5, 5]]}
    assert not state.is_replayed(0, 1)
    state.commit()
    assert len(saved) == 2  # written ahead, then after
    assert state.is_replayed(0, 1) and state.is_replayed(1, 5) and not state.is_replayed(1, 4)
    again = _load(saved[-1])
    assert again.replayed[0].ranges() == [(1, 2)] and again.pending is None and again.count() == 3


def test_state_settles_a_pending_chunk_with_what_was_found() -> None:
    saved: list[str] = []
    state = _empty()
    state.save = lambda s: saved.append(s.dumps())
    state.begin([(0, 1), (0, 2), (0, 3)], NOW_MS)
    reloaded = _load(saved[-1])  # as a new run finds it after a kill
    assert reloaded.pending is not None and len(reloaded.pending) == 3
    assert reloaded.pending.since_ms < NOW_MS
    reloaded.commit(found=[(0, 2), (0, 99)])  # 99 was not in flight: ignored
    assert reloaded.is_replayed(0, 2) and not reloaded.is_replayed(0, 1) and not reloaded.is_replayed(0, 99)
    assert reloaded.pending is None


def test_state_refuses_a_recreated_topic_and_an_unreadable_document() -> None:
    state = _empty()
    state.begin([(0, 1)], NOW_MS)
    state.commit()
    with pytest.raises(OpsError, match="the state belongs to an earlier topic.*HINT") as exc:
        _load(state.dumps(), topic_id="id-2")
    assert exc.value.status == USAGE
    for bad in ("{not json", "[]", '{"version": 99}', '{"version": 1}'):
        with pytest.raises(OpsError, match="the state is unreadable.*HINT"):
            _load(bad)


def test_state_merge_is_a_union_of_replayed_and_in_flight() -> None:
    a, b = _empty(), _empty()
    a.begin([(0, 1), (0, 2)], NOW_MS)
    a.commit()
    a.begin([(1, 7)], NOW_MS)
    b.begin([(0, 2), (0, 3), (2, 0)], NOW_MS)
    b.commit()
    b.begin([(1, 8)], NOW_MS - 5000)
    a.merge(b)
    assert a.replayed[0].ranges() == [(1, 3)] and a.replayed[2].ranges() == [(0, 0)] and a.count() == 4
    assert a.pending is not None and a.pending.offsets[1].ranges() == [(7, 8)]
    assert a.pending.since_ms == b.pending.since_ms  # the earlier of the two
    fresh = _empty()
    fresh.merge(_empty())
    assert fresh.count() == 0 and fresh.pending is None


def test_legacy_state_files_are_found_by_cluster_and_topics(tmp_path: Path) -> None:
    a = legacy_path(tmp_path, "cluster-a", "events.failed", "events")
    assert a != legacy_path(tmp_path, "cluster-b", "events.failed", "events")
    assert a.name.startswith("replay.events.failed.to.events.")
    assert load_legacy(a, "cluster-a", "events.failed", "id-1", "events") is None
    state = _empty()
    state.begin([(0, 4)], NOW_MS)
    state.commit()
    a.write_text(state.dumps())
    loaded = load_legacy(a, "cluster-a", "events.failed", "id-1", "events")
    assert loaded is not None and loaded.is_replayed(0, 4)
    with pytest.raises(OpsError, match=f"legacy state file {a} belongs to an earlier topic"):
        load_legacy(a, "cluster-a", "events.failed", "id-2", "events")


# --- reconcile


def test_tally_missing_duplicated_unknown() -> None:
    t = Tally(10, 20)
    for off in (10, 11, 12, 13, 14, 16, 17, 18):  # 15 and 19: no record (e.g. transaction markers)
        t.add_input(off)
    for off in (10, 11, 11, 13, 15):
        assert t.add_output(off, "ok")
    assert not t.add_output(25, "ok")
    t.add_output(17, "failed")
    assert t.inputs == 8
    assert t.missing() == [(12, 12), (14, 14), (16, 16), (18, 18)]
    assert t.duplicated() == [(11, 11)]
    assert t.unknown() == 1
    assert t.by_topic == {"ok": 5, "failed": 1}


def test_report_lists_missing_as_ranges() -> None:
    report = Report("in", ("ok", "bad"))
    t0, t1 = Tally(0, 10), Tally(0, 4)
    for off in range(10):
        t0.add_input(off)
    for off in range(4):
        t1.add_input(off)
    for off in (0, 1, 2, 6, 7):
        t0.add_output(off, "ok")
    t0.add_output(6, "bad")
    for off in range(4):
        t1.add_output(off, "bad")
    report.tallies = {0: t0, 1: t1}
    out = io.StringIO()
    assert print_report(report, out) == 5
    text = out.getvalue()
    assert "missing: 5 input records have no output" in text
    assert "  partition 0: 3-5, 8-9\n" in text
    assert "partition 1:" not in text.split("missing:")[1].split("duplicated")[0]
    assert "  partition 0: 6\n" in text
    assert report.missing_count() == 5
    totals = next(line for line in text.splitlines() if line.strip().startswith("total")).split()
    assert totals == ["total", "14", "5", "5", "5", "1"]


def test_report_hints_at_lag_when_only_the_tail_is_missing() -> None:
    report = Report("in", ("ok", "bad"))
    t = Tally(0, 5)
    for off in range(5):
        t.add_input(off)
    for off in range(3):
        t.add_output(off, "ok")
    report.tallies = {0: t}
    out = io.StringIO()
    print_report(report, out)
    assert "partition 0: 3-4  (all after the last output seen" in out.getvalue()


# --- trace


def test_parse_source() -> None:
    s = parse_source("events.v2:3:1200")
    assert (s.topic, s.partition, s.offset, str(s)) == ("events.v2", 3, 1200, "events.v2:3:1200")
    for bad in ("events:1", "events:a:1", ":1:2", "events:-1:2"):
        with pytest.raises(ValueError):
            parse_source(bad)


def test_event_id_of_follows_the_dataflow() -> None:
    def rec(value: bytes | None) -> SourceRecord:
        return SourceRecord("events", 1, 42, 0, None, value)

    good = b'{"event_id":"e-1","event_type":"t","occurred_at":"2026-01-01T00:00:00Z","customer_id":"c"}'
    assert event_id_of(rec(good), 1 << 20) == ("e-1", True)
    assert event_id_of(rec(b'{"event_id":"e-2"}'), 1 << 20) == ("e-2", True)  # schema violation, id readable
    assert event_id_of(rec(b"{nope"), 1 << 20) == ("events:1:42", False)
    assert event_id_of(rec(None), 1 << 20) == ("events:1:42", False)
    assert event_id_of(rec(good), 10) == ("events:1:42", False)  # over the size limit: not decoded
    # a header name that is not UTF-8: the dataflow fails it before reading the event_id
    bad_name = SourceRecord("events", 1, 42, 0, None, good, [("\\xff", b"1")], "1 header name is not UTF-8")
    assert event_id_of(bad_name, 1 << 20) == ("events:1:42", False)


def test_show_bytes() -> None:
    assert show_bytes(None) == "null"
    assert show_bytes(b"caf\xc3\xa9") == "café"
    assert show_bytes(b"\xff\x00") == "\\xff\\x00"
    assert show_bytes(b"x" * 20, 5).startswith("xxxxx… (20 bytes")


# --- progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_prints_periodic_lines_when_not_a_terminal() -> None:
    clock, stream = FakeClock(), io.StringIO()
    bar = Progress("scan", total=100, stream=stream, interval=10, clock=clock)
    for _ in range(50):
        clock.now += 0.1
        bar.advance()
    assert stream.getvalue() == ""
    clock.now = 10.0
    bar.advance(note="3 selected")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines == ["scan: 51/100 (51%) records, 5/s, ~10s left, 3 selected"]


def test_progress_rewrites_one_line_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock, stream = FakeClock(), Tty()
    bar = Progress("scan", stream=stream, clock=clock)
    for _ in range(3):
        clock.now += 1
        bar.advance()
    bar.close()
    text = stream.getvalue()
    assert "\n" not in text and text.count("\r\x1b[K") == 4 and "scan: 3 records" in text


def test_progress_can_be_silenced() -> None:
    clock, stream = FakeClock(), io.StringIO()
    bar = Progress("scan", stream=stream, enabled=False, interval=0, clock=clock)
    clock.now = 100
    bar.advance()
    bar.close()
    assert stream.getvalue() == ""


# --- the command line


def _usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv, NOW)
    assert exc.value.code == USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err


def test_cli_parses_a_replay() -> None:
    args = cli.parse_args(
        [
            "replay",
            "--code",
            "customer_not_found",
            "--code",
            "invalid_json,empty_value",
            "--since",
            "2h",
            "--until",
            "2026-03-01T11:30:00Z",
            "--offsets",
            "0:5-9",
            "--offsets",
            "100-",
            "--dry-run",
            "--limit",
            "3",
            "--to",
            "events.retry",
            "-q",
        ],
        NOW,
    )
    assert args.codes == {"customer_not_found", "invalid_json", "empty_value"}
    assert args.since == NOW_MS - 2 * 3600_000 and args.until == NOW_MS - 30 * 60_000
    assert args.spans == (OffsetSpan(0, 5, 9), OffsetSpan(None, 100, None))
    assert args.dry_run and args.limit == 3 and args.to == "events.retry" and args.quiet
    assert args.chunk_size == 500 and args.state_dir is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "--code", "nope"], "unknown error code 'nope'"),
        (["replay", "--since", "1h", "--until", "2h"], "--until must be later than --since"),
        (["replay", "--offsets", "0:1-2", "--offsets", "0:5-6"], "--offsets given twice for partition 0"),
        (["replay", "--limit", "0"], "must be at least 1"),
        (["replay", "--to", "bad topic"], "a Kafka topic name"),
        (["replay", "--since", "2026-01-01T00:00:00"], "no UTC offset"),
        (["trace"], "give either an EVENT_ID or --source"),
        (["trace", "e-1", "--source", "t:0:1"], "give either an EVENT_ID or --source"),
        (["trace", "e-1", "--full-scan"], "--full-scan goes with --source"),
        (["trace", "--source", "t:0"], "is not TOPIC:PARTITION:OFFSET"),
        (["reconcile", "--offsets", "3-1"], "the range ends before it starts"),
        (["reconcile", "--skew", "-5"], "must be more than 0"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_cli_usage_errors_are_one_line_with_status_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert message in _usage_error(capsys, argv)


def test_cli_bad_setting_exits_2_before_connecting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCYLLA_PORT", "ninety")
    assert cli.main(["reconcile"]) == USAGE
    err = capsys.readouterr().err
    assert err.startswith("ops reconcile: error: bad setting SCYLLA_PORT='ninety'") and err.count("\n") == 1


def test_cli_help_lists_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["replay", "--help"], ["trace", "--help"], ["reconcile", "--help"]):
        with pytest.raises(SystemExit) as exc:
            cli.parse_args(argv, NOW)
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "exit status:" in out and "130" in out
