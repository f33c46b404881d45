"""Pure figures of the benchmark: percentiles, the steady-state window, CPU and RSS over
time, targets, and the printed table. No Kafka, database or process code here, so the
arithmetic is unit-tested (tests/unit/test_bench.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# targets of issue 5, reported (never asserted by tests)
TARGET_VS_NAIVE = 30.0
TARGET_VS_PASSTHROUGH = 0.25
TARGET_VS_FLOOR = 0.90  # issue 14: the dataflow at 90% of the I/O floor
TARGET_CPU_US = 20.0  # issue 14: client CPU per record
TARGET_P99_MS = 250.0
TARGET_RSS_GROWTH_PCT = 10.0
TARGET_SOAK_MINUTES = 10.0
TARGET_LARGE_MB_S = 25.0  # issue 11: ~1 MiB records
TARGET_PARTITION_SPREAD_PCT = 10.0  # issue 14: throughput within 10% across partition counts

VARIANTS = ("passthrough", "floor", "dataflow", "exactly-once", "naive", "avro", "protobuf")
# the dataflow over the same records written in a Schema Registry format, in and out
FORMAT_VARIANTS = ("avro", "protobuf")


def percentiles(values: Iterable[float], qs: Sequence[float]) -> list[float | None]:
    """Percentiles `qs` (0..100) by linear interpolation between closest ranks (numpy's
    default); None for each when there are no values."""
    data = sorted(values)
    if not data:
        return [None for _ in qs]
    out: list[float | None] = []
    last = len(data) - 1
    for q in qs:
        if not 0 <= q <= 100:
            raise ValueError(f"percentile {q} is outside 0..100")
        pos = last * q / 100
        lo = math.floor(pos)
        hi = min(lo + 1, last)
        out.append(data[lo] + (data[hi] - data[lo]) * (pos - lo))
    return out


def latency_summary(latencies_ms: Iterable[float]) -> dict[str, float | int | None]:
    data = sorted(latencies_ms)
    p50, p99, p999 = percentiles(data, (50, 99, 99.9))
    return {
        "count": len(data),
        "p50": _round(p50),
        "p99": _round(p99),
        "p999": _round(p999),
        "max": _round(data[-1]) if data else None,
    }


def per_second(points: Iterable[tuple[float, float]], t0_ms: float) -> list[dict[str, float | int | None]]:
    """(create time ms, latency ms) pairs grouped by the second of their create time since
    `t0_ms`: p50, p99 and the largest of each second, so a stall shows where it happened."""
    seconds: dict[int, list[float]] = {}
    for created, latency in points:
        seconds.setdefault(int((created - t0_ms) // 1000), []).append(latency)
    out: list[dict[str, float | int | None]] = []
    for sec in sorted(seconds):
        summary = latency_summary(seconds[sec])
        out.append(
            {"t": sec, "count": summary["count"], "p50": summary["p50"], "p99": summary["p99"], "max": summary["max"]}
        )
    return out


@dataclass(frozen=True)
class Window:
    """The steady-state part of a run: `records` outputs appended between `start_ms` and
    `end_ms` (Kafka append times), after warm-up and before the drain."""

    start_ms: int
    end_ms: int
    records: int

    @property
    def seconds(self) -> float:
        return (self.end_ms - self.start_ms) / 1000

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3), "rate": round(self.rate, 1)}


def steady_window(
    timestamps_ms: Iterable[int], warmup: float = 0.10, cooldown: float = 0.01, min_records: int = 50
) -> Window | None:
    """Skip the first `warmup` and the last `cooldown` fractions of the outputs (by append
    time); the rate is the outputs between the first and last kept timestamps over the time
    between them. None when too few records or no time between them (a rate from a single
    millisecond would be noise)."""
    ts = sorted(timestamps_ms)
    n = len(ts)
    first = math.floor(n * warmup)
    last = n - 1 - math.floor(n * cooldown)
    if last - first < min_records or ts[last] <= ts[first]:
        return None
    return Window(ts[first], ts[last], last - first)


def interpolate(samples: Sequence[tuple[float, float]], at: float) -> float | None:
    """The value of a cumulative series (time, value), linearly interpolated at `at`;
    clamped to the ends; None when empty."""
    if not samples:
        return None
    if at <= samples[0][0]:
        return samples[0][1]
    for (t0, v0), (t1, v1) in zip(samples, samples[1:], strict=False):
        if t0 <= at <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (at - t0) / (t1 - t0)
    return samples[-1][1]


def cpu_per_1k(cpu_samples: Sequence[tuple[float, float]], window: Window | None) -> float | None:
    """CPU seconds per 1,000 records inside the steady window, from cumulative CPU samples
    (wall time in seconds, CPU seconds)."""
    if window is None or not cpu_samples:
        return None
    a = interpolate(cpu_samples, window.start_ms / 1000)
    b = interpolate(cpu_samples, window.end_ms / 1000)
    if a is None or b is None:
        return None
    return (b - a) / window.records * 1000


def rss_growth(samples: Sequence[tuple[float, float]], warmup_s: float) -> dict[str, Any] | None:
    """RSS at the end of warm-up against RSS at the end (samples: seconds since start, MB)."""
    after = [(t, v) for t, v in samples if t >= warmup_s]
    if len(after) < 2:
        return None
    base, end = after[0][1], after[-1][1]
    return {
        "warmup_s": warmup_s,
        "rss_after_warmup_mb": round(base, 1),
        "rss_end_mb": round(end, 1),
        "rss_peak_after_warmup_mb": round(max(v for _, v in after), 1),
        "growth_pct": round((end - base) / base * 100, 2) if base else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _round(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def targets(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against this run's figures; `met` is None when not measured."""
    ratios = report.get("ratios", {})
    hit_heavy = report.get("config", {}).get("workload") == "zipf"
    note = "" if hit_heavy else "target is for the hit-heavy (zipf) workload"
    out = [
        _target(
            "dataflow / naive records/s",
            f">= {TARGET_VS_NAIVE:g}x",
            ratios.get("dataflow_vs_naive"),
            lambda v: v >= TARGET_VS_NAIVE,
            note,
        ),
        _target(
            "dataflow / passthrough records/s",
            f">= {TARGET_VS_PASSTHROUGH:.0%}",
            ratios.get("dataflow_vs_passthrough"),
            lambda v: v >= TARGET_VS_PASSTHROUGH,
            note,
        ),
        _target(
            "dataflow / I/O floor records/s",
            f">= {TARGET_VS_FLOOR:.0%}",
            ratios.get("dataflow_vs_floor"),
            lambda v: v >= TARGET_VS_FLOOR,
            "",
        ),
    ]
    dataflow_cpu = (report.get("variants", {}).get("dataflow") or {}).get("cpu_s_per_1k")
    out.append(
        _target(
            "dataflow CPU per record (µs)",
            f"<= {TARGET_CPU_US:g}",
            dataflow_cpu * 1000 if dataflow_cpu is not None else None,
            lambda v: v <= TARGET_CPU_US,
            "client process, user + sys, steady window",
        )
    )
    lat = report.get("latency_run") or {}
    out.append(
        _target(
            "p99 latency at fixed rate (ms)",
            f"<= {TARGET_P99_MS:g}",
            (lat.get("latency_ms") or {}).get("p99"),
            lambda v: v <= TARGET_P99_MS,
            f"at {lat['rate']:,.0f}/s" if lat.get("rate") else "",
        )
    )
    large = report.get("large_records") or {}
    out.append(
        _target(
            "~1 MiB records (MB/s)",
            f">= {TARGET_LARGE_MB_S:g}",
            large.get("mb_per_s"),
            lambda v: v >= TARGET_LARGE_MB_S,
            "",
        )
    )
    sweep = report.get("partition_sweep") or []
    rates = [r["dataflow"].get("rate_rps") for r in sweep]
    spread = (max(rates) / min(rates) - 1) * 100 if len(rates) > 1 and all(rates) else None
    out.append(
        _target(
            "dataflow rate across partitions (%)",
            f"<= {TARGET_PARTITION_SPREAD_PCT:g}",
            spread,
            lambda v: v <= TARGET_PARTITION_SPREAD_PCT,
            "fastest over slowest - 1, steady-window rates of the partition sweep",
        )
    )
    soak = report.get("soak") or {}
    growth = (soak.get("rss") or {}).get("growth_pct")
    minutes = soak.get("minutes")
    soak_note = (
        ""
        if not minutes or minutes >= TARGET_SOAK_MINUTES
        else f"soak was {minutes:g} min; the target is over {TARGET_SOAK_MINUTES:g}"
    )
    out.append(
        _target(
            "RSS growth over soak (%)",
            f"< {TARGET_RSS_GROWTH_PCT:g}",
            growth,
            lambda v: v < TARGET_RSS_GROWTH_PCT,
            soak_note,
        )
    )
    return out


def _target(name: str, target: str, value: float | None, ok: Any, note: str) -> dict[str, Any]:
    return {
        "name": name,
        "target": target,
        "value": value,
        "met": None if value is None else bool(ok(value)),
        "note": note,
    }


def _fmt(value: Any, spec: str = ",.0f", none: str = "-") -> str:
    if value is None:
        return none
    return format(value, spec)


def format_table(report: Mapping[str, Any]) -> str:
    """The table printed at the end of a run (and reproducible from its JSON report)."""
    cfg = report.get("config", {})
    lines = [
        f"benchmark {report.get('run_id', '?')}: {cfg.get('records', 0):,} records, {cfg.get('workload')} "
        f"workload ({cfg.get('customer_space', 0):,} customer ids, {cfg.get('customers_seeded', 0):,} seeded), "
        f"{cfg.get('partitions')} partitions, ~{cfg.get('event_bytes_mean', 0):.0f}-byte events",
        "",
        f"{'variant':<24}{'records':>9}{'records/s':>11}{'p50 ms':>10}{'p99 ms':>10}{'p99.9 ms':>10}"
        f"{'CPU s/1k':>10}{'peak RSS MB':>13}  gate",
    ]
    rows: list[tuple[str, Mapping[str, Any]]] = []
    for name in VARIANTS:
        v = report.get("variants", {}).get(name)
        if v:
            rows.append((name, v))
    lat = report.get("latency_run")
    if lat:
        rows.append((f"dataflow @ {lat.get('rate', 0):,.0f}/s", lat))
    eos_lat = report.get("latency_run_exactly_once")
    if eos_lat:
        rows.append((f"exactly-once @ {eos_lat.get('rate', 0):,.0f}/s", eos_lat))
    large = report.get("large_records")
    if large:
        rows.append(("dataflow, ~1 MiB records", large))
    for label, v in rows:
        latency = v.get("latency_ms") or {}
        gate = v.get("gate") or {}
        gate_txt = "ok" if gate.get("ok") else ("FAIL: " + "; ".join(gate.get("problems", [])[:2]))
        lines.append(
            f"{label:<24}{_fmt(v.get('records_processed')):>9}{_fmt(v.get('rate_rps')):>11}"
            f"{_fmt(latency.get('p50'), ',.1f'):>10}{_fmt(latency.get('p99'), ',.1f'):>10}"
            f"{_fmt(latency.get('p999'), ',.1f'):>10}{_fmt(v.get('cpu_s_per_1k'), '.3f'):>10}"
            f"{_fmt(v.get('peak_rss_mb'), ',.0f'):>13}  {gate_txt}"
        )
    notes = [f"  {label}: {v['note']}" for label, v in rows if v.get("note")]
    if any(name in VARIANTS for name, _ in rows):
        notes.append(
            "  p50/p99 of the backlog rows include the time records waited in the pre-loaded topic; "
            "latency under load is the fixed-rate row"
        )
    if notes:
        lines += ["", "notes:", *notes]
    ratios = report.get("ratios", {})
    lines += [
        "",
        f"dataflow / passthrough  {_fmt(ratios.get('dataflow_vs_passthrough'), '.1%')}",
        f"dataflow / naive        {_fmt(ratios.get('dataflow_vs_naive'), ',.1f')}x",
    ]
    if ratios.get("dataflow_vs_floor") is not None:
        lines.append(f"dataflow / I/O floor    {_fmt(ratios.get('dataflow_vs_floor'), '.1%')}")
    if ratios.get("exactly_once_vs_dataflow") is not None:
        lines.append(f"exactly-once / dataflow {_fmt(ratios.get('exactly_once_vs_dataflow'), '.1%')}")
    if lat and eos_lat:
        a, e = lat.get("visible_latency_ms") or {}, eos_lat.get("visible_latency_ms") or {}
        lines.append(
            f"latency as a read_committed consumer sees it, same rate: at-least-once p50/p99 "
            f"{_fmt(a.get('p50'), ',.1f')}/{_fmt(a.get('p99'), ',.1f')} ms, exactly-once "
            f"{_fmt(e.get('p50'), ',.1f')}/{_fmt(e.get('p99'), ',.1f')} ms"
        )
    if large:
        lines.append(f"~1 MiB records           {_fmt(large.get('mb_per_s'), ',.1f')} MB/s")
    soak = report.get("soak")
    if soak:
        rss = soak.get("rss") or {}
        lines.append(
            f"soak {soak.get('minutes'):g} min at {soak.get('rate', 0):,.0f}/s: RSS "
            f"{_fmt(rss.get('rss_after_warmup_mb'), ',.0f')} MB after warm-up -> "
            f"{_fmt(rss.get('rss_end_mb'), ',.0f')} MB at the end "
            f"({_fmt(rss.get('growth_pct'), '+.1f')}%)"
        )
    if sweep := report.get("partition_sweep"):
        lines += [
            "",
            "partition sweep (input topics of N partitions; the dataflow's outputs as above, the floor's N; "
            "whole run = records / wall time, start-up included):",
            f"{'partitions':>12}{'variant':>10}{'records/s':>11}{'whole run/s':>13}{'CPU s/1k':>10}"
            f"{'threads':>9}{'peak RSS MB':>13}",
        ]
        for r in sweep:
            for name in ("floor", "dataflow"):
                v = r.get(name) or {}
                lines.append(
                    f"{r['partitions']:>12}{name:>10}{_fmt(v.get('rate_rps')):>11}{_fmt(v.get('rate_whole_run')):>13}"
                    f"{_fmt(v.get('cpu_s_per_1k'), '.3f'):>10}{_fmt(v.get('peak_threads')):>9}"
                    f"{_fmt(v.get('peak_rss_mb')):>13}"
                )
    lines += ["", "targets:"]
    for t in report.get("targets", []):
        mark = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        value = _fmt(t["value"], ",.3g")
        note = f"  ({t['note']})" if t["note"] else ""
        lines.append(f"  {t['name']:<34}{t['target']:>10}  {value:>8}  {mark}{note}")
    return "\n".join(lines)
