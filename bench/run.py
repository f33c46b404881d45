"""`python -m bench` (`make bench`): load one workload, run each variant over it, run the
dataflow at a fixed rate for latency (and optionally a soak), check every output, and write
a JSON report to bench/results/ plus a table on stdout.

The servers are those of the settings (the local stack by default). The benchmark keeps to
its own PostgreSQL database (`--pg-database`), topics `bench.<run id>.*` and keyspaces
`bench_<run id>_*`, and deletes its topics and keyspaces at the end unless `--keep`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench import chart, metrics, variants
from bench.progress import Display, Watermarks
from bench.variants import ROOT, Bench
from bench.workload import bench_dsn, create_topics, delete_topics, ensure_database, load, records, seed_customers
from flows.adapters.scylla.session import connect
from flows.errors import SettingsError
from flows.settings import Settings

RESULTS = ROOT / "bench" / "results"
SEEDED = 100_000
UNIFORM_SPACE = 1_000_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-n", "--records", type=int, default=200_000, help="records in the workload (default 200000)")
    p.add_argument(
        "--uniform",
        action="store_true",
        help=f"miss-heavy: customers drawn uniformly from {UNIFORM_SPACE:,} ids "
        f"(default: Zipf over the {SEEDED:,} seeded ones, hit-heavy)",
    )
    p.add_argument(
        "--variants",
        default=",".join(metrics.VARIANTS),
        help="comma-separated, from passthrough,floor,dataflow,exactly-once,naive (default: all)",
    )
    p.add_argument("--partitions", type=int, default=4, help="partitions of every bench topic (default 4)")
    p.add_argument(
        "--naive-records",
        type=int,
        default=20_000,
        help="the naive baseline handles at most this many records (default 20000)",
    )
    p.add_argument(
        "--naive-seconds",
        type=float,
        default=60,
        help="... or for at most this long, whichever comes first (default 60)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=0,
        help="records/s for the latency run (default: 70%% of the dataflow's measured rate)",
    )
    p.add_argument(
        "--latency-seconds",
        type=float,
        default=30,
        help="length of the fixed-rate latency run; 0 skips it (default 30)",
    )
    p.add_argument(
        "--soak-minutes",
        type=float,
        default=0,
        help="soak: the dataflow tails a topic fed at a fixed rate this long (default 0: none)",
    )
    p.add_argument(
        "--soak-rate",
        type=float,
        default=0,
        help="records/s during the soak (default: 25%% of the dataflow's measured rate, which "
        "the machine sustains beside the feeder for the whole soak, so the soak measures "
        "memory at steady state rather than a growing backlog)",
    )
    p.add_argument(
        "--large-records",
        type=int,
        default=200,
        help="the large-record run: the dataflow over this many ~1 MiB records; 0 skips it (default 200)",
    )
    p.add_argument(
        "--pg-database",
        default="enrichment_bench",
        help="PostgreSQL database of the benchmark's customers, on PG_DSN's server",
    )
    p.add_argument(
        "--partition-sweep",
        default="",
        help="comma-separated partition counts (e.g. 1,32,256): the floor and the dataflow again over "
        "--sweep-records records in input topics of each count (outputs keep --partitions); threads, RSS and "
        "rates side by side (default: none)",
    )
    p.add_argument("--sweep-records", type=int, default=60_000, help="records per sweep run (default 60000)")
    p.add_argument("--keep", action="store_true", help="keep the run's topics and keyspaces")
    p.add_argument(
        "--profile",
        action="store_true",
        help="run the dataflow variant under py-spy and say where its time goes (its figures then do not compare)",
    )
    args = p.parse_args(argv)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(chosen) - set(metrics.VARIANTS)
    if unknown or not chosen:
        p.error(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(metrics.VARIANTS)}")
    args.variants = [v for v in metrics.VARIANTS if v in chosen]
    try:
        args.partition_sweep = [int(n) for n in args.partition_sweep.split(",") if n.strip()]
    except ValueError:
        p.error("--partition-sweep: comma-separated integers")
    if any(n < 1 for n in args.partition_sweep):
        p.error("--partition-sweep: at least 1 partition")
    if args.records < 1000:
        p.error("--records: at least 1000")
    return args


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg": os.getloadavg(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    from importlib.metadata import version

    import bytewax  # noqa: F401 - versions for the report
    import cassandra
    import confluent_kafka
    import msgspec
    import psycopg

    info["versions"] = {
        "bytewax": version("bytewax"),
        "confluent-kafka": version("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
        "psycopg": psycopg.__version__,
        "scylla-driver": cassandra.__version__,
        "msgspec": msgspec.__version__,
    }
    return info


def cleanup(bench: Bench) -> None:
    for mon in bench.running:
        if mon.running:
            mon.stop(10)
    deleted = delete_topics(bench.settings, bench.prefix + ".")
    logging.getLogger("cassandra").setLevel(logging.ERROR)
    cluster = connect(bench.settings)
    try:
        session = cluster.connect()
        names = [r.keyspace_name for r in session.execute("SELECT keyspace_name FROM system_schema.keyspaces")]
        mine = [n for n in names if n.startswith(bench.ks_prefix + "_")]
        for name in mine:
            session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=120)
    finally:
        cluster.shutdown()
    bench.display.done(f"cleanup: deleted {len(deleted)} topics and {len(mine)} keyspaces")


def partition_sweep(bench: Bench, args: argparse.Namespace, settings: Settings, space: int) -> list[dict[str, Any]]:
    """The floor and the dataflow over the same records in input topics of each partition
    count: one consumer per worker should keep threads, RSS and the rate flat. The
    dataflow's output topics keep --partitions; the floor copies each record to the same
    partition, so its output topics have the input's count."""
    rows: list[dict[str, Any]] = []
    for count in args.partition_sweep:
        sweeps = {
            "floor": dataclasses.replace(bench, partitions=count, tag=f"_p{count}", running=bench.running),
            "dataflow": dataclasses.replace(bench, tag=f"_p{count}", running=bench.running),
        }
        topic = f"{bench.prefix}.events_p{count}"
        create_topics(settings, [topic], count, log_append_time=False)
        recs = records(args.sweep_records, space, args.uniform, 7, settings.max_value_bytes)
        loaded = load(settings, topic, recs, SEEDED)
        row: dict[str, Any] = {"partitions": count, "records": loaded.records}
        for name, run in (("floor", variants.floor), ("dataflow", variants.dataflow)):
            result = run(sweeps[name], loaded)
            row[name] = {
                k: result.get(k)
                for k in ("rate_rps", "wall_s", "cpu_s_per_1k", "cpu_s_per_1k_whole_run", "peak_rss_mb", "peak_threads")
            }
            row[name]["gate_ok"] = result.get("gate", {}).get("ok")
            row[name]["rate_whole_run"] = round(loaded.records / result["wall_s"], 1) if result.get("wall_s") else None
            bench.display.done(f"[sweep {count} partitions, {name}] {_line(result)}")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        base = Settings.from_env()
        dsn = bench_dsn(base, args.pg_database)
        env = variants.environment({"PG_DSN": dsn})
        settings = Settings.from_env(env)
    except SettingsError as exc:
        print(f"error: bad setting {exc}", file=sys.stderr)
        return 2
    run_id = time.strftime("%Y%m%d-%H%M%S")
    workload = "uniform" if args.uniform else "zipf"
    space = UNIFORM_SPACE if args.uniform else SEEDED
    display = Display()
    bench = Bench(
        settings,
        env,
        run_id,
        args.partitions,
        SEEDED,
        space,
        args.uniform,
        RESULTS / run_id,
        display,
        Watermarks(settings),
        args.profile,
    )
    report: dict[str, Any] = {
        "schema": 1,
        "run_id": run_id,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "config": {
            "records": args.records,
            "workload": workload,
            "customer_space": space,
            "customers_seeded": SEEDED,
            "zipf_s": None if args.uniform else 1.1,
            "bad_ratio": 0.01,
            "partitions": args.partitions,
            "variants": args.variants,
            "naive_records": args.naive_records,
            "naive_seconds": args.naive_seconds,
            "pg_database": args.pg_database,
        },
        "variants": {},
    }
    started = time.monotonic()
    status = 0
    try:
        ensure_database(base, args.pg_database)
        took = seed_customers(dsn, settings, SEEDED)
        display.done(f"seeded {SEEDED:,} customers into database {args.pg_database} in {took:.1f}s")
        topic = f"{bench.prefix}.events"
        create_topics(settings, [topic], args.partitions, log_append_time=False)
        loaded = load(
            settings,
            topic,
            records(args.records, space, args.uniform, 7, settings.max_value_bytes),
            SEEDED,
            on_progress=lambda n: display.show(f"[load] {n:,}/{args.records:,}"),
        )
        report["config"]["event_bytes_mean"] = round(loaded.bytes_mean, 1)
        report["load"] = {
            "topic": topic,
            "records": loaded.records,
            "seconds": round(loaded.seconds, 2),
            "expected_outcomes": loaded.outcomes(),
        }
        display.done(
            f"loaded {loaded.records:,} records (~{loaded.bytes_mean:.0f} bytes) into {topic} "
            f"in {loaded.seconds:.1f}s: {loaded.outcomes()}"
        )

        for name in args.variants:
            if name == "passthrough":
                result = variants.passthrough(bench, loaded)
            elif name == "floor":
                result = variants.floor(bench, loaded)
            elif name == "dataflow":
                result = variants.dataflow(bench, loaded)
            elif name == "exactly-once":
                result = variants.dataflow(bench, loaded, exactly_once=True)
            elif name in metrics.FORMAT_VARIANTS:
                sample_records = list(records(args.records, space, args.uniform, 7, settings.max_value_bytes))
                result = variants.in_format(bench, loaded, name, sample_records)
            else:
                result = variants.naive(bench, loaded, args.naive_records, args.naive_seconds)
            report["variants"][name] = result
            display.done(f"[{name}] {_line(result)}")

        rates = {k: v.get("rate_rps") for k, v in report["variants"].items()}
        report["ratios"] = {
            "dataflow_vs_passthrough": metrics.ratio(rates.get("dataflow"), rates.get("passthrough")),
            "dataflow_vs_naive": metrics.ratio(rates.get("dataflow"), rates.get("naive")),
            "exactly_once_vs_dataflow": metrics.ratio(rates.get("exactly-once"), rates.get("dataflow")),
            "dataflow_vs_floor": metrics.ratio(rates.get("dataflow"), rates.get("floor")),
            "avro_vs_dataflow": metrics.ratio(rates.get("avro"), rates.get("dataflow")),
            "protobuf_vs_dataflow": metrics.ratio(rates.get("protobuf"), rates.get("dataflow")),
        }
        # a profiled dataflow's rate is not its rate: then only an explicit --rate
        rate = args.rate or (0.7 * rates["dataflow"] if rates.get("dataflow") and not args.profile else 0)
        if args.latency_seconds > 0 and rate:
            report["latency_run"] = variants.latency_run(bench, rate, args.latency_seconds)
            display.done(f"[latency] {_line(report['latency_run'])}")
            if "exactly-once" in args.variants:  # the same rate, so the two compare
                report["latency_run_exactly_once"] = variants.latency_run(
                    bench, rate, args.latency_seconds, exactly_once=True
                )
                display.done(f"[latency, exactly-once] {_line(report['latency_run_exactly_once'])}")
        elif args.latency_seconds > 0:
            display.done("[latency] skipped: no dataflow rate measured and no --rate given")
        if args.large_records > 0:
            report["large_records"] = variants.large_records(bench, args.large_records)
            large = report["large_records"]
            display.done(f"[large] {large.get('mb_per_s')} MB/s, {_line(large)}")
        if args.partition_sweep:
            report["partition_sweep"] = partition_sweep(bench, args, settings, space)
        if args.soak_minutes > 0:
            soak_rate = args.soak_rate or (0.25 * rates["dataflow"] if rates.get("dataflow") else 0)
            if soak_rate:
                report["soak"] = variants.soak(bench, soak_rate, args.soak_minutes)
            else:
                display.done("[soak] skipped: no dataflow rate measured and no --soak-rate given")
    except KeyboardInterrupt:
        display.done("interrupted; cleaning up")
        report["interrupted"] = True
        status = 130
    except Exception as exc:
        display.done(f"error: {type(exc).__name__}: {exc}")
        report["error"] = f"{type(exc).__name__}: {exc}"
        status = 1
    finally:
        if not args.keep:
            try:
                cleanup(bench)
            except Exception as exc:  # noqa: BLE001 - report what can't be cleaned, keep the report
                display.done(f"cleanup failed: {exc}")
        bench.marks.close()
    report["seconds"] = round(time.monotonic() - started, 1)
    report["machine"]["load_avg_end"] = os.getloadavg()
    report["targets"] = metrics.targets(report)
    gates = [v.get("gate", {}).get("ok") for v in report["variants"].values()]
    gates += [r[v]["gate_ok"] for r in report.get("partition_sweep", []) for v in ("floor", "dataflow")]
    gates += [
        report[k]["gate"]["ok"]
        for k in ("latency_run", "latency_run_exactly_once", "large_records", "soak")
        if k in report
    ]
    report["all_gates_ok"] = bool(gates) and all(gates)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{run_id}-{workload}-n{args.records}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    chart_path = path.with_suffix(".svg")
    chart_path.write_text(chart.render(report))
    print()
    print(metrics.format_table(report))
    print(f"\nreport: {path.relative_to(ROOT)} ({report['seconds']:,.0f}s in all)")
    print(f"chart: {chart_path.relative_to(ROOT)}")
    if status == 0 and not report["all_gates_ok"]:
        print("correctness gate FAILED for at least one run: its figures do not count")
        status = 1
    return status


def _line(result: dict[str, Any]) -> str:
    lat = result.get("latency_ms") or {}
    gate = result.get("gate") or {}
    rate = result.get("rate_rps")
    threads = f", {result['peak_threads']} threads" if result.get("peak_threads") else ""
    return (
        (f"{rate:,.0f} records/s" if rate else "no rate")
        + f", p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms{threads}, "
        + f"gate {'ok' if gate.get('ok') else gate.get('problems')}"
    )
