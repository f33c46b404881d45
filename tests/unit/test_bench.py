"""The benchmark's pure parts: percentiles, the steady-state window, CPU and RSS over time,
targets, the table, the profile summary, and the workload's expected outcomes."""

from __future__ import annotations

import json

import pytest

from bench import metrics, profile
from bench.workload import outcome_of
from tools.sample import SampleRecord


def test_percentiles_interpolate_between_ranks() -> None:
    assert metrics.percentiles([1, 2, 3, 4], (0, 50, 100)) == [1, 2.5, 4]
    assert metrics.percentiles(range(1, 101), (99,)) == [pytest.approx(99.01)]
    assert metrics.percentiles([5], (50, 99)) == [5, 5]
    assert metrics.percentiles([], (50,)) == [None]


def test_percentiles_do_not_need_sorted_input() -> None:
    assert metrics.percentiles([9, 1, 5], (50,)) == [5]


def test_percentile_outside_range_is_an_error() -> None:
    with pytest.raises(ValueError):
        metrics.percentiles([1], (101,))


def test_latency_summary() -> None:
    assert metrics.latency_summary([10, 20, 30]) == {"count": 3, "p50": 20, "p99": 29.8, "p999": 30.0, "max": 30}
    assert metrics.latency_summary([]) == {"count": 0, "p50": None, "p99": None, "p999": None, "max": None}


def test_steady_window_skips_warmup_and_drain() -> None:
    # 1,000 records: the first 100 slow (warm-up), then one per millisecond
    ts = [i * 100 for i in range(100)] + [10_000 + i for i in range(900)]
    w = metrics.steady_window(ts, warmup=0.1, cooldown=0.0)
    assert w is not None
    assert w.start_ms == 10_000 and w.end_ms == 10_899 and w.records == 899
    assert w.rate == pytest.approx(1000, rel=0.01)
    assert w.as_dict()["rate"] == pytest.approx(1000, rel=0.01)


def test_steady_window_drops_the_tail_too() -> None:
    ts = list(range(1000)) + [60_000]  # one straggler a minute later
    w = metrics.steady_window(ts, warmup=0.1, cooldown=0.01)
    assert w is not None and w.end_ms < 1000


def test_steady_window_needs_records_and_time() -> None:
    assert metrics.steady_window([]) is None
    assert metrics.steady_window([5] * 1000) is None  # all in one millisecond
    assert metrics.steady_window(range(20)) is None


def test_interpolate_and_cpu_per_1k() -> None:
    samples = [(0.0, 0.0), (10.0, 5.0), (20.0, 15.0)]
    assert metrics.interpolate(samples, 5) == 2.5
    assert metrics.interpolate(samples, 15) == 10
    assert metrics.interpolate(samples, -1) == 0 and metrics.interpolate(samples, 99) == 15
    assert metrics.interpolate([], 1) is None
    w = metrics.Window(5_000, 15_000, 2_000)  # 7.5 CPU seconds for 2,000 records
    assert metrics.cpu_per_1k(samples, w) == pytest.approx(3.75)
    assert metrics.cpu_per_1k(samples, None) is None


def test_rss_growth_after_warmup() -> None:
    samples = [(0, 50.0), (30, 90.0), (60, 100.0), (300, 104.0), (600, 105.0)]
    g = metrics.rss_growth(samples, warmup_s=60)
    assert g is not None
    assert g["rss_after_warmup_mb"] == 100 and g["rss_end_mb"] == 105 and g["growth_pct"] == 5.0
    assert metrics.rss_growth(samples, warmup_s=1000) is None


def test_ratio() -> None:
    assert metrics.ratio(30, 4) == 7.5
    assert metrics.ratio(None, 4) is None and metrics.ratio(3, 0) is None


def _report(**over: object) -> dict:
    report = {
        "run_id": "20260101-000000",
        "config": {
            "records": 200_000,
            "workload": "zipf",
            "customer_space": 100_000,
            "customers_seeded": 100_000,
            "partitions": 4,
            "event_bytes_mean": 402.0,
        },
        "variants": {
            "passthrough": {
                "records_processed": 200_000,
                "rate_rps": 40_000.0,
                "latency_ms": {"p50": 1.0, "p99": 2.0},
                "cpu_s_per_1k": 0.004,
                "peak_rss_mb": 80.0,
                "gate": {"ok": True, "problems": []},
            },
            "dataflow": {
                "records_processed": 200_000,
                "rate_rps": 12_000.0,
                "latency_ms": {"p50": 5.0, "p99": 9.0},
                "cpu_s_per_1k": 0.05,
                "peak_rss_mb": 120.0,
                "gate": {"ok": True, "problems": []},
            },
            "naive": {
                "records_processed": 14_000,
                "rate_rps": 250.0,
                "latency_ms": {"p50": 5.0, "p99": 9.0},
                "cpu_s_per_1k": 0.9,
                "peak_rss_mb": 70.0,
                "note": "bounded run",
                "gate": {"ok": False, "problems": ["3 history rows missing"]},
            },
        },
        "ratios": {"dataflow_vs_passthrough": 0.3, "dataflow_vs_naive": 48.0, "dataflow_vs_floor": 0.6},
        "latency_run": {
            "rate": 8400.0,
            "rate_rps": 8390.0,
            "records_processed": 250_000,
            "latency_ms": {"p50": 30.0, "p99": 300.0},
            "gate": {"ok": True, "problems": []},
        },
        "soak": {
            "minutes": 2,
            "rate": 5000.0,
            "rss": {"rss_after_warmup_mb": 100, "rss_end_mb": 103, "growth_pct": 3.0},
        },
    }
    report.update(over)
    return report


def test_targets_against_the_issue() -> None:
    by_name = {t["name"]: t for t in metrics.targets(_report())}
    assert by_name["dataflow / naive records/s"]["met"] is True
    assert by_name["dataflow / passthrough records/s"]["met"] is True
    assert by_name["p99 latency at fixed rate (ms)"]["met"] is False
    assert by_name["dataflow / I/O floor records/s"]["met"] is False
    cpu = by_name["dataflow CPU per record (µs)"]
    assert cpu["value"] == 50.0 and cpu["met"] is False
    soak = by_name["RSS growth over soak (%)"]
    assert soak["met"] is True and "2 min" in soak["note"]


def test_targets_not_measured_and_miss_heavy_note() -> None:
    report = _report(ratios={}, latency_run=None, soak=None, variants={})
    report["config"]["workload"] = "uniform"
    targets = metrics.targets(report)
    assert all(t["met"] is None for t in targets)
    assert "hit-heavy" in targets[0]["note"]


def test_table_has_a_row_per_run_and_the_failed_gate() -> None:
    report = _report()
    report["targets"] = metrics.targets(report)
    table = metrics.format_table(report)
    lines = table.splitlines()
    assert any(line.startswith("passthrough") and "40,000" in line and line.endswith("ok") for line in lines)
    assert any(line.startswith("dataflow @ 8,400/s") for line in lines)
    assert any(line.startswith("naive") and "FAIL: 3 history rows missing" in line for line in lines)
    assert "dataflow / passthrough  30.0%" in table and "dataflow / naive        48.0x" in table
    assert "dataflow / I/O floor    60.0%" in table
    assert "MISSED" in table and "naive: bounded run" in table


def test_table_from_a_report_round_tripped_through_json() -> None:
    report = _report()
    report["targets"] = metrics.targets(report)
    assert metrics.format_table(json.loads(json.dumps(report))) == metrics.format_table(report)


def test_table_with_nothing_measured() -> None:
    assert "not measured" in metrics.format_table({"targets": metrics.targets({})})


def test_profile_categories_first_match_from_the_root() -> None:
    raw = [
        "thread (1): MainThread;<module> (run.py:1);_HistoryPartition.write_batch (flows/history.py:9);"
        "HistoryWriter.write (flows/history.py:8);HistoryWriter.finish (flows/history.py:7);_Round.wait (x:1);"
        "Condition.wait (threading.py:327) 30",
        "thread (1): MainThread;<module> (run.py:1);build_flow.<locals>.decode_step (flows/pipeline.py:1);"
        "decode_record (flows/decode.py:3) 10",
        "thread (1): MainThread;<module> (run.py:355) 10",
        "thread (2): event_loop;Thread.run (threading.py:1);LibevLoop._run_loop (cassandra/io/libevreactor.py:1) 5",
        "garbage",
    ]
    threads = profile.parse(raw)
    assert threads["MainThread"] == {"history: wait for acks, retries": 30, "decode + validate": 10, profile.OTHER: 10}
    assert threads["event_loop"] == {"CQL driver I/O (event loop)": 5}


def test_profile_summary_per_record(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "raw.txt"
    path.write_text(
        "thread (1): MainThread;a;HistoryWriter.finish (x) 100\nthread (1): MainThread;a;decode_batch (x) 100\n"
    )
    summary = profile.summarize(path, records=1000, rate_hz=100)
    main = summary["threads"]["MainThread"]
    assert main["us_per_record"] == 2000.0  # 200 samples at 100 Hz over 1,000 records
    assert {c["name"]: c["share"] for c in main["categories"]} == {
        "history: wait for acks, retries": 0.5,
        "decode + validate": 0.5,
    }
    assert "MainThread: 2000.0 us" in profile.format_summary(summary)


def test_expected_outcome_of_a_sample_record() -> None:
    good = b'{"event_id":"e","event_type":"t","occurred_at":"2026-01-01T00:00:00Z","customer_id":"C0000042"}'
    assert outcome_of(SampleRecord(None, good, [], "enriched"), seeded=100) == "enriched"
    assert outcome_of(SampleRecord(None, good, [], "enriched"), seeded=42) == "customer_not_found"
    assert outcome_of(SampleRecord(None, b"{", [], "invalid_json"), seeded=100) == "invalid_json"


def test_chart_has_a_bar_per_variant_and_latency_lines_per_second() -> None:
    import xml.etree.ElementTree as ET

    from bench import chart

    report = _report()
    report["latency_run"]["latency_per_second"] = [
        {"t": 0, "count": 10, "p50": 20.0, "p99": 90.0, "max": 95.0},
        {"t": 1, "count": 10, "p50": 25.0, "p99": 400.0, "max": 410.0},
        {"t": 2, "count": 10, "p50": 22.0, "p99": 80.0, "max": 85.0},
    ]
    svg = ET.fromstring(chart.render(report))
    ns = "{http://www.w3.org/2000/svg}"
    bars = [r for r in svg.iter(f"{ns}rect") if r.get("class") == "bar"]
    assert len(bars) == 3, "passthrough, dataflow, naive"
    texts = [t.text for t in svg.iter(f"{ns}text")]
    assert "40,000/s" in texts and "12,000/s" in texts and "50 µs" in texts
    lines = {p.get("class"): p.get("points") for p in svg.iter(f"{ns}polyline")}
    assert set(lines) == {"p50", "p99"}
    assert len(lines["p99"].split()) == 3
    # the stall at second 1 is the highest point of the p99 line
    ys = [float(xy.split(",")[1]) for xy in lines["p99"].split()]
    assert ys[1] == min(ys)


def test_chart_of_a_report_with_nothing_measured_is_still_an_svg() -> None:
    import xml.etree.ElementTree as ET

    from bench import chart

    assert ET.fromstring(chart.render({})).tag.endswith("svg")


def test_per_second_groups_by_create_second() -> None:
    points = [(1000.0, 10.0), (1500.0, 30.0), (2100.0, 500.0), (3999.0, 7.0)]
    rows = metrics.per_second(points, t0_ms=1000.0)
    assert [r["t"] for r in rows] == [0, 1, 2]
    assert rows[0]["count"] == 2 and rows[0]["max"] == 30.0
    assert rows[1]["p50"] == 500.0 and rows[2]["p99"] == 7.0


def test_partition_sweep_target_and_table() -> None:
    def run(rate: float, threads: int, rss: float) -> dict:
        return {
            "rate_rps": rate,
            "rate_whole_run": rate / 2,
            "cpu_s_per_1k": 0.04,
            "peak_threads": threads,
            "peak_rss_mb": rss,
            "gate_ok": True,
        }

    sweep = [
        {"partitions": 1, "records": 60_000, "floor": run(30_000, 5, 110), "dataflow": run(20_000, 24, 104)},
        {"partitions": 256, "records": 60_000, "floor": run(26_000, 5, 128), "dataflow": run(17_000, 24, 113)},
    ]
    report = _report(partition_sweep=sweep)
    spread = {t["name"]: t for t in metrics.targets(report)}["dataflow rate across partitions (%)"]
    assert round(spread["value"], 1) == 17.6 and spread["met"] is False
    report["targets"] = metrics.targets(report)
    table = metrics.format_table(report)
    assert "partition sweep" in table
    row = next(line for line in table.splitlines() if line.split()[:2] == ["256", "dataflow"])
    assert row.split()[2:] == ["17,000", "8,500", "0.040", "24", "113"]
    assert {t["name"]: t for t in metrics.targets(_report())}["dataflow rate across partitions (%)"]["met"] is None
