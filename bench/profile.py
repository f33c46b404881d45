"""Where the dataflow's time goes per record, from a py-spy profile (`python -m bench
--profile` records one with `py-spy record --idle --threads -f raw`).

Each sample's stack is put in the first category whose marker appears in it, from the
root down (so "history: build statements" wins over the driver frames below it). Samples
of the main thread (the Bytewax worker) are wall time, waiting included; the CQL driver's
event-loop thread is reported apart.

    python -m bench.profile RAW_FILE RECORDS [--rate HZ]
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "start-up and shutdown",
        (
            "Preflight.result",
            "HistoryWriter.__init__",
            "PgCustomerLookup.__init__",
            "PartitionReader.__init__",
            "WorkerConsumer.__init__",
            "KafkaWriter.__init__",
            "<module> (dataflow.py",
            ".close (",
            "close_all",
        ),
    ),
    ("decode + validate", ("decode_step", "decode_batch")),
    ("enrich: cache + lookups", ("Resolver.resolve",)),
    ("enrich: build outputs (flows.core.outcome)", ("Enricher.process",)),
    ("enrich: metrics + failure logs", ("FailureLog.", "add_results")),
    ("Kafka source: headers", ("HeaderReader.read",)),
    ("Kafka source (consume)", ("PartitionReader.next_batch", "WorkerConsumer.take")),
    ("Kafka produce", ("KafkaWriter.send",)),
    ("Kafka wait for acks", ("KafkaWriter.wait",)),
    ("dead letters: size checks", ("DeadLetters.write",)),
    ("history: send requests", ("_Round.__init__", "_Round._pump")),
    ("history: rows -> CQL statements", ("HistoryWriter.start",)),
    ("history: wait for acks, retries", ("HistoryWriter.finish", "_Round.wait")),
    ("history: other", ("HistoryWriter.write", "HistoryOutput.")),
    ("deliver: drain when idle", ("WorkerOutputs.idle", "Delivery.drain")),
    ("deliver: other", ("Delivery.write",)),
    ("CQL driver I/O (event loop)", ("LibevLoop._run_loop", "AsyncoreLoop", "EventletConnection")),
)
OTHER = "Bytewax runtime (Rust) and other"


def categorize(frames: Iterable[str]) -> str:
    frames = list(frames)
    for name, markers in CATEGORIES:
        if any(m in f for f in frames for m in markers):
            return name
    return OTHER


def parse(lines: Iterable[str]) -> dict[str, Counter[str]]:
    """Samples per thread name and category, from py-spy's raw (collapsed) format:
    `thread (tid): name;frame;frame;... count`."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        head, *frames = stack.split(";")
        thread = head.split("): ", 1)[1] if "): " in head else head
        out[thread][categorize(frames)] += int(count)
    return out


def summarize(path: Path, records: int, rate_hz: float = 100) -> dict[str, Any]:
    """Per category: share of the thread's samples and microseconds per record."""
    with open(path) as f:
        threads = parse(f)
    report: dict[str, Any] = {"records": records, "rate_hz": rate_hz, "threads": {}}
    for thread in ("MainThread", "event_loop"):
        counts = threads.get(thread)
        if not counts:
            continue
        total = sum(counts.values())
        report["threads"][thread] = {
            "samples": total,
            "us_per_record": round(total / rate_hz / records * 1e6, 1) if records else None,
            "categories": [
                {
                    "name": k,
                    "share": round(v / total, 4),
                    "us_per_record": round(v / rate_hz / records * 1e6, 2) if records else None,
                }
                for k, v in counts.most_common()
            ],
        }
    return report


def format_summary(summary: dict[str, Any]) -> str:
    lines = []
    for thread, data in summary["threads"].items():
        lines.append(f"{thread}: {data['us_per_record']} us of wall time per record")
        for c in data["categories"]:
            lines.append(f"  {c['share']:6.1%}  {c['us_per_record']:7.2f} us  {c['name']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw", type=Path)
    parser.add_argument("records", type=int)
    parser.add_argument("--rate", type=float, default=100, help="py-spy's sampling rate (-r)")
    args = parser.parse_args()
    print(format_summary(summarize(args.raw, args.records, args.rate)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
