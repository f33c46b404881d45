"""Each measured run: the five variants over the pre-loaded topic, the fixed-rate latency
run and the soak. Every one runs as a subprocess with its own output topics and history
keyspace, on the same servers, and is checked before its figures count."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import metrics, profile
from bench.collect import (
    Outputs,
    VisibleTail,
    check_by_headers,
    check_history,
    check_passthrough,
    read_input,
    visible_latencies,
)
from bench.proc import Monitored
from bench.progress import Display, Follow, Watermarks
from bench.workload import Loaded, create_topics, load, records
from flows.settings import Settings
from tools import sample

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
DATAFLOW = [PY, "-m", "bytewax.run", "dataflow"]
# the first failure of each code per interval; the log keeps the aggregated lines
FAILED_LINE = b'"msg":"record failed"'
WARMUP_RECORDS = 500
WARMUP_S = 2.0


@dataclass
class Bench:
    """What every run shares: settings (PostgreSQL pointing at the bench database), the
    environment for subprocesses, names, and the display."""

    settings: Settings
    env: dict[str, str]
    run_id: str
    partitions: int
    seeded: int
    space: int
    uniform: bool
    logs: Path
    display: Display
    marks: Watermarks
    profile: bool = False
    running: list[Monitored] = field(default_factory=list)
    tag: str = ""  # added to the variants' topic and keyspace names (the partition sweep)

    @property
    def prefix(self) -> str:
        return f"bench.{self.run_id}"

    @property
    def ks_prefix(self) -> str:
        return "bench_" + self.run_id.replace("-", "_")

    def names(self, variant: str) -> tuple[str, str, str]:
        """Success topic, failure topic, history keyspace of a variant."""
        variant += self.tag
        return f"{self.prefix}.{variant}.enriched", f"{self.prefix}.{variant}.failed", f"{self.ks_prefix}_{variant}"

    def start(
        self,
        label: str,
        cmd: list[str],
        env: dict[str, str] | None = None,
        interval: float = 0.25,
        drop: bytes | None = None,
    ) -> Monitored:
        mon = Monitored(cmd, {**self.env, **(env or {})}, self.logs / f"{label}.log", ROOT, interval, drop)
        self.running.append(mon.start())
        return mon

    def dataflow_env(
        self, input_topic: str, ok: str, failed: str, keyspace: str, stop_at_end: bool, exactly_once: bool = False
    ) -> dict[str, str]:
        return {
            "INPUT_TOPIC": input_topic,
            "OUTPUT_TOPIC": ok,
            "FAILURE_TOPIC": failed,
            "SCYLLA_KEYSPACE": keyspace,
            "STOP_AT_END": "true" if stop_at_end else "false",
            "PROGRESS_INTERVAL_SECONDS": "5",
            "CONSUMER_GROUP": f"{keyspace}_group",
            "PROCESSING_GUARANTEE": "exactly-once" if exactly_once else "at-least-once",
        }

    def follow(self, mon: Monitored, label: str, topics: list[str], target: int | None, timeout_s: float) -> None:
        follow = Follow(self.display, self.marks, label, topics, target)
        deadline = time.monotonic() + timeout_s
        while mon.running:
            if time.monotonic() > deadline:
                mon.stop(10)
                raise RuntimeError(f"{label} still running after {timeout_s:.0f}s; log: {mon.log_path}")
            follow.tick(mon)
            time.sleep(1.0)
        assert mon.exit is not None
        self.display.done(
            f"[{label}] exited with status {mon.exit.returncode} after {mon.exit.wall_s:,.1f}s, "
            f"{follow.marks.count(topics):,} outputs"
        )

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(ROOT))
        except ValueError:
            return str(path)


def summarize(bench: Bench, mon: Monitored, out: Outputs, note: str = "") -> dict[str, Any]:
    """The figures of one backlog run (rate, latency, CPU, RSS) and its gate."""
    ex = mon.exit
    assert ex is not None
    if ex.returncode != 0:
        out.problem(f"exited with status {ex.returncode} (log: {bench.rel(mon.log_path)})")
    window = metrics.steady_window(out.append_ms)
    cpu1k = metrics.cpu_per_1k([(s.wall, s.cpu_s) for s in mon.samples], window)
    return {
        "records_processed": out.records,
        "rate_rps": round(window.rate, 1) if window else None,
        "window": window.as_dict() if window else None,
        "latency_ms": metrics.latency_summary(out.latencies_ms),
        "cpu_s_per_1k": round(cpu1k, 4) if cpu1k is not None else None,
        "cpu_s_total": round(ex.cpu_s, 2),
        "cpu_s_per_1k_whole_run": round(ex.cpu_s / out.records * 1000, 4) if out.records else None,
        "wall_s": round(ex.wall_s, 2),
        "peak_rss_mb": round(ex.peak_rss_mb, 1),
        "peak_threads": max((s.threads for s in mon.samples), default=0),
        "exit_code": ex.returncode,
        "gate": out.gate(),
        "log": bench.rel(mon.log_path),
        "note": note,
    }


def passthrough(bench: Bench, loaded: Loaded) -> dict[str, Any]:
    ok, _, _ = bench.names("passthrough")
    create_topics(bench.settings, [ok], bench.partitions, log_append_time=True)
    mon = bench.start("passthrough", [PY, "-m", "bench.passthrough", loaded.topic, ok])
    bench.follow(mon, "passthrough", [ok], loaded.records, 600 + loaded.records / 500)
    out = check_passthrough(bench.settings, loaded, ok)
    return summarize(bench, mon, out, "copies bytes unchanged: no decode, lookup or history")


def floor(bench: Bench, loaded: Loaded) -> dict[str, Any]:
    ok, _, ks = bench.names("floor")
    create_topics(bench.settings, [ok], bench.partitions, log_append_time=True)
    mon = bench.start("floor", [PY, "-m", "bench.floor", loaded.topic, ok], {"SCYLLA_KEYSPACE": ks})
    bench.follow(mon, "floor", [ok], loaded.records, 600 + loaded.records / 500)
    out = check_passthrough(bench.settings, loaded, ok)
    check_history(bench.settings, ks, loaded, out, statuses=False)
    return summarize(
        bench,
        mon,
        out,
        "the I/O floor: consume, produce the bytes, one history row per record (no bind(), batches of 50, "
        "32 in flight, acknowledgements awaited at the end); no decode, lookup or enrichment",
    )


def dataflow(bench: Bench, loaded: Loaded, exactly_once: bool = False) -> dict[str, Any]:
    label = "exactly-once" if exactly_once else "dataflow"
    ok, failed, ks = bench.names(label.replace("-", "_"))
    create_topics(bench.settings, [ok, failed], bench.partitions, log_append_time=True)
    cmd, raw = DATAFLOW, bench.logs / "dataflow.py-spy.txt"
    if bench.profile:
        cmd = [
            py_spy(),
            "record",
            "--idle",
            "--threads",
            "-r",
            str(PROFILE_HZ),
            "-f",
            "raw",
            "-o",
            str(raw),
            "--",
            *DATAFLOW,
        ]
    env = bench.dataflow_env(loaded.topic, ok, failed, ks, True, exactly_once)
    mon = bench.start(label, cmd, env, drop=FAILED_LINE)
    bench.follow(mon, label, [ok, failed], loaded.records, 600 + loaded.records / 200)
    out = check_by_headers(bench.settings, loaded, ok, failed, committed_only=exactly_once)
    check_history(bench.settings, ks, loaded, out)
    if exactly_once:
        note = f"PROCESSING_GUARANTEE=exactly-once, COMMIT_INTERVAL_MS={bench.settings.commit_interval_ms}"
        return summarize(bench, mon, out, note)
    if not bench.profile:
        return summarize(bench, mon, out)
    result = summarize(bench, mon, out, "profiled with py-spy: rate, CPU and RSS are not comparable")
    result["profile"] = profile.summarize(raw, loaded.records, PROFILE_HZ) if raw.exists() else None
    result["profile_raw"] = bench.rel(raw)
    if result["profile"]:
        bench.display.done(
            "[dataflow] where the time goes (py-spy, wall time):\n" + profile.format_summary(result["profile"])
        )
    return result


def in_format(bench: Bench, loaded: Loaded, fmt: str, recs: list[sample.SampleRecord]) -> dict[str, Any]:
    """The dataflow with INPUT_FORMAT and OUTPUT_FORMAT `fmt`, over the same records written
    in `fmt` (loaded into a topic of their own first: that time is not counted)."""
    from bench.workload import load, outcome_of
    from tools import formats

    topic = f"{bench.prefix}.{fmt}.events{bench.tag}"
    create_topics(bench.settings, [topic], bench.partitions, log_append_time=False)
    encoded = formats.in_format(recs, fmt, bench.settings, topic, lambda r: outcome_of(r, bench.seeded))
    fmt_loaded = load(bench.settings, topic, encoded, bench.seeded, outcome=lambda r: r.expect)
    ok, failed, ks = bench.names(fmt.replace("-", "_"))
    create_topics(bench.settings, [ok, failed], bench.partitions, log_append_time=True)
    env = {**bench.dataflow_env(topic, ok, failed, ks, True), "INPUT_FORMAT": fmt, "OUTPUT_FORMAT": fmt}
    mon = bench.start(fmt, DATAFLOW, env, drop=FAILED_LINE)
    bench.follow(mon, fmt, [ok, failed], fmt_loaded.records, 600 + fmt_loaded.records / 200)
    out = check_by_headers(bench.settings, fmt_loaded, ok, failed)
    check_history(bench.settings, ks, fmt_loaded, out)
    note = f"INPUT_FORMAT={fmt}, OUTPUT_FORMAT={fmt}: {fmt_loaded.bytes_mean:.0f} bytes a record in"
    return summarize(bench, mon, out, note)


PROFILE_HZ = 100


def py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if not found:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def naive(bench: Bench, loaded: Loaded, max_records: int, max_seconds: float) -> dict[str, Any]:
    ok, failed, ks = bench.names("naive")
    create_topics(bench.settings, [ok, failed], bench.partitions, log_append_time=True)
    report = bench.logs / "naive-report.json"
    cmd = [
        PY,
        "-m",
        "bench.naive",
        loaded.topic,
        ok,
        failed,
        "--report",
        str(report),
        "--max-records",
        str(max_records),
        "--max-seconds",
        str(max_seconds),
    ]
    mon = bench.start("naive", cmd, {"SCYLLA_KEYSPACE": ks})
    bench.follow(
        mon,
        "naive",
        [ok, failed],
        min(max_records, loaded.records) or loaded.records,
        300 + (max_seconds or loaded.records / 50),
    )
    upto = None
    handled = 0
    if report.exists():
        done = json.loads(report.read_text())
        upto = {int(p): off for p, off in done["next_offsets"].items()}
        handled = done["handled"]
    out = check_by_headers(bench.settings, loaded, ok, failed, upto=upto)
    check_history(bench.settings, ks, loaded, out, upto=upto)
    bounded = handled < loaded.records
    note = (
        f"bounded run: the first {handled:,} records (stops at {max_records:,} records or "
        f"{max_seconds:g} s); rate from those"
        if bounded
        else ""
    )
    return summarize(bench, mon, out, note)


LARGE_PAD = 1_040_000  # payload padding: events of ~1,040,200 bytes, just under the 1 MiB value limit


def large_records(bench: Bench, n: int) -> dict[str, Any]:
    """The dataflow over a backlog of ~1 MiB valid records: MB/s through decode, lookup,
    history (the payload is part of the row) and produce."""
    label = "large"
    inp = f"{bench.prefix}.{label}.events"
    ok, failed, ks = bench.names(label)
    create_topics(bench.settings, [inp], bench.partitions, log_append_time=False)
    create_topics(bench.settings, [ok, failed], bench.partitions, log_append_time=True)
    recs = sample.events(n, bench.seeded, bad_ratio=0, seed=21, pad=LARGE_PAD, large=False)
    loaded = load(bench.settings, inp, recs, bench.seeded)
    bench.display.done(f"[{label}] loaded {loaded.records:,} records of ~{loaded.bytes_mean / 1e6:.2f} MB")
    mon = bench.start(label, DATAFLOW, bench.dataflow_env(inp, ok, failed, ks, True), drop=FAILED_LINE)
    bench.follow(mon, label, [ok, failed], loaded.records, 600 + n)
    out = check_by_headers(bench.settings, loaded, ok, failed)
    check_history(bench.settings, ks, loaded, out)
    result = summarize(bench, mon, out, f"{n:,} valid records of ~{loaded.bytes_mean / 1e6:.2f} MB each")
    rate = result.get("rate_rps")
    result["record_bytes_mean"] = round(loaded.bytes_mean)
    result["mb_per_s"] = round(rate * loaded.bytes_mean / 1e6, 1) if rate else None
    return result


def _wait_for(
    bench: Bench, mon: Monitored, label: str, topics: list[str], want: int, timeout_s: float, what: str
) -> int:
    follow = Follow(bench.display, bench.marks, label, topics, want)
    deadline = time.monotonic() + timeout_s
    while True:
        got = follow.tick(mon, what)
        if got >= want:
            return got
        if not mon.running:
            raise RuntimeError(f"{label}: the dataflow exited while {what}; log: {mon.log_path}\n{mon.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label}: {got:,} of {want:,} outputs after {timeout_s:.0f}s while {what}")
        time.sleep(0.5)


def _tailing(
    bench: Bench, label: str, rate: float, seconds: float, uniform: bool, space: int, exactly_once: bool = False
) -> tuple[Monitored, Monitored, dict[str, Any]]:
    """Start the dataflow tailing a fresh topic, wait until it answers, then feed the topic
    at `rate` for `seconds`; returns once the dataflow has caught up (still running)."""
    inp = f"{bench.prefix}.{label}.events"
    ok, failed, ks = bench.names(label)
    create_topics(bench.settings, [inp], bench.partitions, log_append_time=False)
    create_topics(bench.settings, [ok, failed], bench.partitions, log_append_time=True)
    mon = bench.start(
        label,
        DATAFLOW,
        bench.dataflow_env(inp, ok, failed, ks, False, exactly_once),
        interval=1.0 if seconds > 120 else 0.25,
        drop=FAILED_LINE,
    )
    load(bench.settings, inp, records(WARMUP_RECORDS, space, uniform, 99, bench.settings.max_value_bytes), bench.seeded)
    _wait_for(bench, mon, label, [ok, failed], WARMUP_RECORDS, 180, "starting")
    bench.display.done(f"[{label}] dataflow up; feeding {rate:,.0f} records/s for {seconds:,.0f}s")
    feed_report = bench.logs / f"{label}-feeder.json"
    cmd = [
        PY,
        "-m",
        "bench.feeder",
        inp,
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        "--space",
        str(space),
        "--report",
        str(feed_report),
    ] + (["--uniform"] if uniform else [])
    tail = VisibleTail(bench.settings, [ok, failed], bench.partitions)
    tail.start()
    fed_from = time.time()
    feeder = bench.start(f"{label}-feeder", cmd)
    follow = Follow(bench.display, bench.marks, label, [ok, failed])
    while feeder.running:
        follow.tick(mon, f"{bench.marks.count([inp]):,} fed")
        if not mon.running:
            feeder.stop(5)
            raise RuntimeError(f"{label}: the dataflow exited during the run; log: {mon.log_path}\n{mon.tail()}")
        time.sleep(1.0)
    fed_to = time.time()
    fed = json.loads(feed_report.read_text()) if feed_report.exists() else {}
    if feeder.exit is None or feeder.exit.returncode != 0:
        raise RuntimeError(f"{label}: the feeder failed; log: {feeder.log_path}\n{feeder.tail()}")
    total = bench.marks.count([inp])
    _wait_for(bench, mon, label, [ok, failed], total, 300, "draining")
    time.sleep(2 * bench.settings.commit_interval_ms / 1000 + 0.5)  # the last transaction commits
    tail.stop()
    return (
        mon,
        feeder,
        {
            "input": inp,
            "ok": ok,
            "failed": failed,
            "keyspace": ks,
            "fed_from": fed_from,
            "fed_to": fed_to,
            "feeder": fed,
            "inputs": total,
            "visible": tail.seen,
        },
    )


def _stop(bench: Bench, mon: Monitored, label: str) -> dict[str, Any]:
    """SIGINT, as a user's Ctrl-C or an orchestrator's stop would; it must exit promptly."""
    t0 = time.monotonic()
    ex, how = mon.stop(30)
    took = time.monotonic() - t0
    bench.display.done(f"[{label}] stopped by {how} in {took:.1f}s, exit status {ex.returncode}")
    return {"stopped_by": how, "stop_seconds": round(took, 2), "exit_code": ex.returncode}


def latency_run(bench: Bench, rate: float, seconds: float, exactly_once: bool = False) -> dict[str, Any]:
    """The dataflow tailing a topic fed at `rate`: end-to-end latency of the records fed
    after the warm-up, from Kafka's timestamps (input create time to output append time)
    and as a `read_committed` consumer sees it (input create time to the moment the output
    became visible to it: what exactly-once's commit interval adds shows here)."""
    label = "latency_exactly_once" if exactly_once else "latency"
    mon, _, run = _tailing(bench, label, rate, seconds, bench.uniform, bench.space, exactly_once)
    stop = _stop(bench, mon, label)
    loaded = read_input(bench.settings, run["input"])
    out = check_by_headers(bench.settings, loaded, run["ok"], run["failed"], committed_only=exactly_once)
    check_history(bench.settings, run["keyspace"], loaded, out)
    if stop["stopped_by"] != "SIGINT":
        out.problem(f"did not exit on SIGINT within 30s (needed {stop['stopped_by']})")
    # the feeder's own clock: it starts producing only after generating its records
    fed_from = run["feeder"].get("started_at", run["fed_from"])
    fed_to = run["feeder"].get("ended_at", run["fed_to"])
    t0_ms, t1_ms = (fed_from + WARMUP_S) * 1000, fed_to * 1000
    appended = [(c, lat) for c, lat in zip(out.create_ms, out.latencies_ms, strict=True) if t0_ms <= c <= t1_ms]
    measured = [lat for _, lat in appended]
    visible_points, unseen = visible_latencies(loaded, run["visible"], t0_ms, t1_ms)
    visible = [lat for _, lat in visible_points]
    if unseen:
        out.problem(f"{unseen} outputs never seen by the read_committed tail")
    in_window = len(measured)
    cpu = None
    if in_window:
        window = metrics.Window(int(t0_ms), int(t1_ms), in_window)
        cpu = metrics.cpu_per_1k([(s.wall, s.cpu_s) for s in mon.samples], window)
    ex = mon.exit
    assert ex is not None
    return {
        "rate": round(rate, 1),
        "seconds": seconds,
        "feeder": run["feeder"],
        "records_processed": out.records,
        "rate_rps": run["feeder"].get("rate"),
        # exactly-once: the visible latency is the end-to-end one (append time precedes the commit)
        "latency_ms": metrics.latency_summary(visible if exactly_once else measured),
        "append_latency_ms": metrics.latency_summary(measured),
        "visible_latency_ms": metrics.latency_summary(visible),
        # per second of the run (by input create time), for the chart
        "latency_per_second": metrics.per_second(visible_points if exactly_once else appended, t0_ms),
        "cpu_s_per_1k": round(cpu, 4) if cpu is not None else None,
        "peak_rss_mb": round(ex.peak_rss_mb, 1),
        "gate": out.gate(),
        **stop,
        "log": bench.rel(mon.log_path),
        "note": f"tailing, fed at a fixed rate; latency of records created after the first {WARMUP_S:g}s"
        + (" (as a read_committed consumer sees them)" if exactly_once else ""),
    }


def soak(bench: Bench, rate: float, minutes: float) -> dict[str, Any]:
    """The dataflow tails a topic fed at `rate` for `minutes`; RSS sampled every second.
    Uniform draws over 1,000,000 ids, so the bounded customer cache fills (and starts
    evicting) in the first minute: growth after that is not the cache warming up."""
    label = "soak"
    seconds = minutes * 60
    mon, _, run = _tailing(bench, label, rate, seconds, True, 1_000_000)
    stop = _stop(bench, mon, label)
    outputs = bench.marks.count([run["ok"], run["failed"]])
    fed_from = run["feeder"].get("started_at", run["fed_from"])
    series = [(s.wall - fed_from, s.rss_mb) for s in mon.samples if s.wall >= fed_from]
    warmup_s = max(60.0, 0.1 * seconds)
    every = 10.0
    sampled: list[tuple[float, float]] = []
    for t, rss in series:
        if not sampled or t - sampled[-1][0] >= every:
            sampled.append((round(t, 1), round(rss, 1)))
    problems = (
        []
        if outputs == run["inputs"]
        else [f"{run['inputs'] - outputs:,} of {run['inputs']:,} input records without an output"]
    )
    if stop["stopped_by"] != "SIGINT":
        problems.append(f"did not exit on SIGINT within 30s (needed {stop['stopped_by']})")
    return {
        "minutes": minutes,
        "rate": round(rate, 1),
        "feeder": run["feeder"],
        "workload": "uniform over 1,000,000 ids",
        "rss": metrics.rss_growth(series, warmup_s),
        "rss_every_10s": sampled,
        "gate": {"ok": not problems, "inputs": run["inputs"], "outputs": outputs, "problems": problems},
        **stop,
        "log": bench.rel(mon.log_path),
    }


def environment(base: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **base}
    env.pop("PYTHONSTARTUP", None)
    return env
