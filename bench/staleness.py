"""How fresh enrichment is with CACHE_INVALIDATION=notify: the time from a customer change's
commit to the first record enriched with it, under load and under a burst of changes; and
what listening costs in throughput. Against the local stack (docs/benchmark.md, Freshness).

    python -m bench.staleness [--rate 5000] [--seconds 30] [--probes-per-s 5] [--burst 1000]

1. Staleness. A dataflow (`-w 2`, TTLs of an hour, so only invalidation can refresh a
   cached customer) reads a stream fed at `--rate` over `--customers` customers. A prober
   picks a customer, sends records for it every 5 ms, changes its name after 1 s, commits,
   and goes on until a record comes out with the new name: that record's `enriched_at`
   minus the commit time is one staleness sample (records are in flight all along, so this
   is when the caches dropped the customer, not how long a record queues). At most
   `--probes-per-s` probes a second. The first half of the run is the load alone, the
   second adds `--burst` other customers' changes per second.
2. Cost. The same backlog (`--backlog` records) through the dataflow with
   CACHE_INVALIDATION=ttl and notify, without changes and with the burst, in turn, twice.

Prints a table and writes bench/results/staleness-<time>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer

from bench import workload
from flows import connections
from flows.adapters.postgres import changes
from flows.settings import Settings
from tools import provision, sample
from tools.kafkautil import produce_all

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LONG_TTL = {"CACHE_TTL_SECONDS": "3600", "CACHE_NEGATIVE_TTL_SECONDS": "3600"}
LEAD_S = 1.0  # a probe's records flow this long before its change


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Burst(threading.Thread):
    """`per_s` customer updates a second (in transactions of 10), until stopped."""

    def __init__(self, dsn: str, customers: int, per_s: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.customers, self.per_s = dsn, customers, per_s
        self.stop = threading.Event()
        self.done = 0

    def run(self) -> None:
        if self.per_s <= 0:
            return
        rng = random.Random(7)
        with psycopg.connect(self.dsn, autocommit=False) as conn:
            started = time.monotonic()
            while not self.stop.is_set():
                due = int((time.monotonic() - started) * self.per_s)
                while self.done < due:
                    ids = [sample.customer_id(rng.randrange(self.customers)) for _ in range(10)]
                    with conn.transaction():
                        conn.execute(
                            "UPDATE customers SET segment = %s WHERE customer_id = ANY(%s)",
                            (f"b{self.done % 7}", ids),
                        )
                    self.done += 10
                time.sleep(0.005)


class Prober:
    """Changes one customer's name, then probes it until a record carries the new name."""

    def __init__(self, settings: Settings, topics: dict[str, str], dsn: str, customers: int) -> None:
        self.settings, self.topics, self.dsn, self.customers = settings, topics, dsn, customers
        # (when, staleness seconds, seconds until the first record of any data enriched after the commit)
        self.samples: list[tuple[float, float, float]] = []
        self.lost = 0
        self._producer = Producer({**connections.kafka_common(settings), "linger.ms": 0})
        self._consumer = Consumer(
            {
                **connections.kafka_common(settings),
                "group.id": f"staleness-{uuid.uuid4().hex}",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
            }
        )
        self._consumer.subscribe([topics["output"]])
        self._rng = random.Random(3)

    def ready(self) -> None:
        """Wait until the output consumer has its partitions (so no probe output is missed)."""
        deadline = time.monotonic() + 30
        while not self._consumer.assignment() and time.monotonic() < deadline:
            self._consumer.poll(0.2)

    def probe(self, k: int, conn: psycopg.Connection[Any]) -> None:
        """Records of one customer every 5 ms from `LEAD_S` before its change until one
        comes out with the change: records are in flight at every moment, so the first fresh
        one shows when the caches dropped the customer, not how long a record queues."""
        cid = sample.customer_id(self._rng.randrange(self.customers))
        marker = f"probe-{k}"
        started = time.monotonic()
        committed: float | None = None
        first_after: float | None = None
        j = 0
        while time.monotonic() < started + LEAD_S + 10:
            if committed is None and time.monotonic() >= started + LEAD_S:
                conn.execute("UPDATE customers SET name = %s WHERE customer_id = %s", (marker, cid))
                committed = time.time()
            doc = {
                "event_id": f"{marker}-{j}",
                "event_type": "probe",
                "occurred_at": "2026-12-03T00:00:00Z",
                "customer_id": cid,
            }
            self._producer.produce(self.topics["input"], json.dumps(doc).encode(), key=cid.encode())
            self._producer.poll(0)
            j += 1
            end = time.monotonic() + 0.005
            while time.monotonic() < end:
                msg = self._consumer.poll(0.001)
                if msg is None or msg.error() or committed is None:
                    continue
                out = json.loads(msg.value())
                if out.get("event_type") != "probe" or not str(out.get("event_id", "")).startswith(marker + "-"):
                    continue
                enriched = dt.datetime.fromisoformat(out["enriched_at"].replace("Z", "+00:00")).timestamp()
                if enriched >= committed and first_after is None:
                    first_after = enriched  # the dataflow's next record for it, fresh or not
                if out.get("customer", {}).get("name") == marker:
                    busy = (first_after if first_after is not None else enriched) - committed
                    self.samples.append((committed, max(0.0, enriched - committed), max(0.0, busy)))
                    return
        self.lost += 1

    def close(self) -> None:
        self._producer.flush(10)
        self._consumer.close()


def start_flow(topics: dict[str, str], mode: str, stop_at_end: bool, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "INPUT_TOPIC": topics["input"],
        "OUTPUT_TOPIC": topics["output"],
        "FAILURE_TOPIC": topics["failure"],
        "CACHE_INVALIDATION": mode,
        "STOP_AT_END": "true" if stop_at_end else "false",
        **LONG_TTL,
    }
    out = open(log, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflow", "-w", "2"], cwd=ROOT, env=env, stdout=out, stderr=out
    )


def make_topics(settings: Settings, label: str) -> dict[str, str]:
    base = f"stale-{label}-{uuid.uuid4().hex[:6]}"
    topics = {"input": f"{base}.events", "output": f"{base}.enriched", "failure": f"{base}.failed"}
    named = dataclasses.replace(
        settings, input_topic=topics["input"], output_topic=topics["output"], failure_topic=topics["failure"]
    )
    provision.ensure_topics(named, list(topics.values()), 4)  # sized for each other by their roles
    return topics


def staleness(settings: Settings, args: argparse.Namespace, dsn: str, log: Path) -> dict[str, Any]:
    topics = make_topics(settings, "live")
    flow = start_flow(topics, "notify", False, log)
    feeder = subprocess.Popen(
        [sys.executable, "-m", "bench.feeder", topics["input"], "--rate", str(args.rate), "--seconds",
         str(args.seconds + 20), "--uniform", "--space", str(args.customers)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    prober = Prober(settings, topics, dsn, args.customers)
    burst = Burst(dsn, args.customers, args.burst)
    burst_started = float("inf")
    try:
        prober.ready()
        time.sleep(10)  # the dataflow is up and the customers cached
        with psycopg.connect(dsn, autocommit=True) as conn:
            started = time.time()
            half = started + args.seconds / 2
            k = 0
            while time.time() < started + args.seconds:
                if time.time() >= half and not burst.is_alive() and args.burst:
                    burst.start()
                    burst_started = time.time()
                tick = time.monotonic()
                prober.probe(k, conn)
                k += 1
                time.sleep(max(0.0, 1 / args.probes_per_s - (time.monotonic() - tick)))
    finally:
        burst.stop.set()
        prober.close()
        feeder.terminate()
        flow.terminate()
        flow.wait(90)
        feeder.wait(30)
        provision.delete_topics(settings, list(topics.values()))
    summary: dict[str, Any] = {"lost_probes": prober.lost, "burst_changes": burst.done}
    for name, keep in (("load", lambda t: t < burst_started), ("load_and_burst", lambda t: t >= burst_started)):
        picked = [(stale, busy) for t, stale, busy in prober.samples if keep(t)]
        values = [stale for stale, _ in picked]
        summary[name] = {
            "samples": len(values),
            "p50_ms": round(percentile(values, 0.5) * 1000, 1),
            "p99_ms": round(percentile(values, 0.99) * 1000, 1),
            "max_ms": round(max(values, default=float("nan")) * 1000, 1),
            "mean_ms": round(statistics.fmean(values) * 1000, 1) if values else None,
            # how much of each sample was the dataflow not enriching anything for the customer
            # (a stall), and how much was a stale answer after that
            "samples_ms": [[round(stale * 1000, 1), round(busy * 1000, 1)] for stale, busy in picked],
            "stale_beyond_next_record_max_ms": round(max((s - b for s, b in picked), default=0.0) * 1000, 1),
        }
    return summary


def backlog_rate(
    settings: Settings, args: argparse.Namespace, mode: str, burst_per_s: int, dsn: str, log: Path
) -> float:
    topics = make_topics(settings, mode)
    produce_all(settings, topics["input"], workload.records(args.backlog, args.customers, True, 5, 1 << 20))
    burst = Burst(dsn, args.customers, burst_per_s)
    burst.start()
    started = time.monotonic()
    flow = start_flow(topics, mode, True, log)
    rc = flow.wait(900)
    elapsed = time.monotonic() - started
    burst.stop.set()
    provision.delete_topics(settings, list(topics.values()))
    if rc != 0:
        raise SystemExit(f"the {mode} backlog run exited {rc}; see {log}")
    return args.backlog / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=5000, help="records per second of the stream (default 5000)")
    parser.add_argument("--seconds", type=float, default=30, help="staleness run length (default 30)")
    parser.add_argument("--probes-per-s", type=float, default=5, help="changes measured per second (default 5)")
    parser.add_argument("--burst", type=int, default=1000, help="other changes per second in the second half")
    parser.add_argument("--customers", type=int, default=5000, help="customers seeded and streamed over")
    parser.add_argument("--backlog", type=int, default=60000, help="records of each cost run (0: skip)")
    args = parser.parse_args()
    settings = Settings.from_env()
    dsn = settings.pg_dsn.get()
    workload.seed_customers(dsn, settings, args.customers)
    changes.install(settings)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    log = RESULTS / f"staleness-{stamp}.log"
    report: dict[str, Any] = {"args": vars(args), "staleness": staleness(settings, args, dsn, log)}
    if args.backlog:
        # listening alone, then with the burst of changes on both sides (its load on the shared
        # cores and, with notify, the lookups the dropped entries cost)
        runs = [("ttl", 0), ("notify", 0), ("ttl", args.burst), ("notify", args.burst)]
        rates: dict[str, list[float]] = {f"{m}+{b}": [] for m, b in runs}
        for _ in range(2):
            for mode, burst_per_s in runs:
                rate = backlog_rate(settings, args, mode, burst_per_s, dsn, log)
                rates[f"{mode}+{burst_per_s}"].append(round(rate, 1))
        report["backlog_records_per_s"] = rates
        mean = {k: statistics.fmean(v) for k, v in rates.items()}
        report["notify_vs_ttl"] = round(mean["notify+0"] / mean["ttl+0"], 3)
        report["notify_vs_ttl_with_burst"] = round(mean[f"notify+{args.burst}"] / mean[f"ttl+{args.burst}"], 3)
    path = RESULTS / f"staleness-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    s = report["staleness"]
    print(f"staleness, commit to the first record enriched with the change ({path.name}):")
    for name in ("load", "load_and_burst"):
        r = s[name]
        figures = f"p50 {r['p50_ms']:>7} ms  p99 {r['p99_ms']:>7} ms  max {r['max_ms']:>7} ms"
        print(f"  {name:<15} {figures}  ({r['samples']} changes)")
    print(f"  probes never seen fresh within 10 s: {s['lost_probes']}; burst changes made: {s['burst_changes']}")
    beyond = [s[n]["stale_beyond_next_record_max_ms"] for n in ("load", "load_and_burst")]
    print(f"  a stale record after the dataflow's next one for the customer, at most: {beyond[0]} / {beyond[1]} ms")
    if args.backlog:
        print("backlog records/s (mode+changes per second, two runs each):")
        for key, values in report["backlog_records_per_s"].items():
            print(f"  {key:<15} {values}")
        print(f"  notify/ttl {report['notify_vs_ttl']}, with the burst {report['notify_vs_ttl_with_burst']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
