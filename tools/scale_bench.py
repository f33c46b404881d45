"""Records/s of the dataflow by cluster shape: `python -m tools.scale_bench --records 100000
--shapes 1x1,1x2,2x1`.

Produces the records once to a fresh input topic (`--partitions`, default 4), then runs
each shape (processes x workers, through tools.run_local with recovery on, STOP_AT_END)
into its own output topics. Reports per shape: wall time of the run (start-up included)
and the steady rate, records over the span between the first and the last output
message's timestamp. Runs against the local stack; the servers share the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from flows import connections
from flows.settings import Settings
from tools import provision, sample
from tools.kafkautil import produce_all

ROOT = Path(__file__).resolve().parents[1]


def output_span(settings: Settings, topics: list[str], partitions: int) -> tuple[int, float]:
    """(messages, seconds between the first and last message timestamp) over `topics`."""
    consumer = Consumer(
        {
            **connections.kafka_common(settings),
            "group.id": f"scale-bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    first, last, count = float("inf"), 0.0, 0
    try:
        for topic in topics:
            for p in range(partitions):
                tp = TopicPartition(topic, p)
                lo, hi = consumer.get_watermark_offsets(tp, timeout=10)
                count += hi - lo
                for offset in {lo, hi - 1} if hi > lo else ():
                    consumer.assign([TopicPartition(topic, p, offset)])
                    msg = consumer.consume(1, 10)[0]
                    ts = msg.timestamp()[1] / 1000
                    first, last = min(first, ts), max(last, ts)
    finally:
        consumer.close()
    return count, max(last - first, 1e-3)


def run_shape(env: dict[str, str], processes: int, workers: int, recovery: Path, base_port: int) -> float:
    started = time.monotonic()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.run_local",
            "-p",
            str(processes),
            "-w",
            str(workers),
            "-r",
            str(recovery),
            "-s",
            "10",
            "-b",
            "0",
            "--base-port",
            str(base_port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=1800,
    )
    if res.returncode != 0:
        raise RuntimeError(f"{processes}x{workers} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.scale_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--shapes", default="1x1,1x2,2x1", help="processes x workers, comma-separated")
    parser.add_argument("--base-port", type=int, default=2201)
    args = parser.parse_args()
    base = f"scale_{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "INPUT_TOPIC": f"{base}.events",
        "SCYLLA_KEYSPACE": "enrichment_scale",
        "STOP_AT_END": "true",
        "LOG_LEVEL": "WARNING",
    }
    settings = Settings.from_env({**env, "OUTPUT_TOPIC": "x.out", "FAILURE_TOPIC": "x.failed"})
    provision.ensure_topics(settings, [settings.input_topic], args.partitions)
    provision.seed_customers(settings, sample.customers(args.customers))
    produce_all(
        settings, settings.input_topic, sample.events(args.records, args.customers, bad_ratio=0.02, large=False)
    )
    results = []
    for shape in args.shapes.split(","):
        processes, workers = (int(x) for x in shape.split("x"))
        out, failed = f"{base}.{shape}.enriched", f"{base}.{shape}.failed"
        provision.ensure_topics(settings, [out, failed], args.partitions)
        shape_env = {**env, "OUTPUT_TOPIC": out, "FAILURE_TOPIC": failed}
        with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
            wall = run_shape(shape_env, processes, workers, Path(tmp) / "recovery", args.base_port)
        count, span = output_span(settings, [out, failed], args.partitions)
        row = {
            "shape": f"{processes}x{workers}",
            "records": count,
            "wall_s": round(wall, 2),
            "wall_records_per_s": round(count / wall),
            "steady_s": round(span, 2),
            "steady_records_per_s": round(count / span),
        }
        print(json.dumps(row), flush=True)
        results.append(row)
    provision.delete_topics(
        settings, [settings.input_topic] + [f"{base}.{r['shape']}.{k}" for r in results for k in ("enriched", "failed")]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
