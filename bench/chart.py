"""The benchmark's chart, an SVG written beside its JSON report (no plotting library):
records/s of every variant side by side (CPU µs per record on each bar), and for each
fixed-rate run its latency p50 and p99 per second, so a stall (a Cassandra flush on the
shared cores, a rebalance) shows where it happened."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

from bench.metrics import VARIANTS

WIDTH = 900
BAR_H = 300
LINE_H = 260
PAD = 60
COLORS = {"p50": "#1f77b4", "p99": "#d62728"}


def _text(x: float, y: float, text: str, size: int = 12, anchor: str = "middle", weight: str = "normal") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
        f'font-weight="{weight}" font-family="sans-serif">{escape(text)}</text>'
    )


def _bars(report: Mapping[str, Any], top: float) -> list[str]:
    rows = [(n, v) for n in VARIANTS if (v := report.get("variants", {}).get(n)) and v.get("rate_rps")]
    out = [_text(WIDTH / 2, top + 20, "records/s by variant (CPU µs per record on the bar)", 14, weight="bold")]
    if not rows:
        return [*out, _text(WIDTH / 2, top + BAR_H / 2, "no variant measured")]
    peak = max(v["rate_rps"] for _, v in rows)
    base = top + BAR_H - 30
    span = BAR_H - 80
    slot = (WIDTH - 2 * PAD) / len(rows)
    for i, (name, v) in enumerate(rows):
        h = span * v["rate_rps"] / peak
        x = PAD + i * slot + slot * 0.15
        w = slot * 0.7
        fill = "#2ca02c" if (v.get("gate") or {}).get("ok") else "#999999"
        out.append(f'<rect class="bar" x="{x:.1f}" y="{base - h:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{fill}"/>')
        out.append(_text(x + w / 2, base - h - 6, f"{v['rate_rps']:,.0f}/s"))
        cpu = v.get("cpu_s_per_1k")
        if cpu is not None and h > 20:
            out.append(_text(x + w / 2, base - h / 2, f"{cpu * 1000:.0f} µs", 11))
        out.append(_text(x + w / 2, base + 16, name))
    return out


def _lines(label: str, run: Mapping[str, Any], top: float) -> list[str]:
    seconds: Sequence[Mapping[str, Any]] = run.get("latency_per_second") or []
    title = f"{label} at {run.get('rate', 0):,.0f}/s: latency per second (ms), p50 and p99"
    out = [_text(WIDTH / 2, top + 20, title, 14, weight="bold")]
    points = [s for s in seconds if s.get("p99") is not None]
    if not points:
        return [*out, _text(WIDTH / 2, top + LINE_H / 2, "no per-second figures")]
    t_max = max(s["t"] for s in points) or 1
    y_max = max(s["p99"] for s in points) or 1
    left, right, bottom, height = PAD, WIDTH - PAD, top + LINE_H - 30, LINE_H - 70
    out.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#444"/>')
    out.append(f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{bottom - height}" stroke="#444"/>')
    out.append(_text(left - 6, bottom - height + 4, f"{y_max:,.0f}", 10, "end"))
    out.append(_text(left - 6, bottom + 4, "0", 10, "end"))
    out.append(_text(right, bottom + 16, f"{t_max} s", 10, "end"))
    for key, color in COLORS.items():
        xy = " ".join(
            f"{left + (right - left) * s['t'] / t_max:.1f},{bottom - height * (s[key] or 0) / y_max:.1f}"
            for s in points
        )
        out.append(f'<polyline class="{key}" points="{xy}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    out.append(_text(right - 80, top + 40, "p50", 11, "start").replace("<text", f'<text fill="{COLORS["p50"]}"'))
    out.append(_text(right - 40, top + 40, "p99", 11, "start").replace("<text", f'<text fill="{COLORS["p99"]}"'))
    return out


def render(report: Mapping[str, Any]) -> str:
    """The chart of a report, as an SVG document."""
    runs = [
        (label, report[key])
        for key, label in (("latency_run", "at-least-once"), ("latency_run_exactly_once", "exactly-once"))
        if report.get(key)
    ]
    height = BAR_H + LINE_H * len(runs) + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        *_bars(report, 0),
    ]
    for i, (label, run) in enumerate(runs):
        parts += _lines(label, run, BAR_H + i * LINE_H)
    parts.append(_text(WIDTH - 10, height - 6, f"benchmark {report.get('run_id', '?')}", 10, "end"))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
