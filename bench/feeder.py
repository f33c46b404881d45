"""Produce the benchmark's workload into a topic at a fixed rate, for the latency run and
the soak (a process of its own, so the pacing does not share a GIL with the measuring).

Up to `--pool` distinct records are generated first, then cycled. They are produced on a
5 ms tick, as many as are due by then, so the rate holds on average and each record's
CreateTime is when it was handed to the producer.

    python -m bench.feeder TOPIC --rate R --seconds S [--uniform] [--space N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from typing import Any

from confluent_kafka import KafkaError, Producer

from bench.workload import producer_conf, records
from flows.settings import Settings

TICK_S = 0.005


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("topic")
    parser.add_argument("--rate", type=float, required=True, help="records per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--uniform", action="store_true", help="uniform over --space customer ids, else Zipf")
    parser.add_argument("--space", type=int, default=100_000, help="customer ids drawn from")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--pool", type=int, default=200_000, help="distinct records generated, then cycled")
    parser.add_argument("--report", help="JSON file for the totals")
    args = parser.parse_args()
    settings = Settings.from_env()
    producer = Producer({**producer_conf(settings), "client.id": "bench-feeder"})
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    total = int(args.rate * args.seconds)
    # generated before the clock starts and cycled, so the feeder spends its CPU on producing
    # (event ids repeat across cycles; history rows still differ by source offset)
    pool = list(records(min(total, args.pool), args.space, args.uniform, args.seed, settings.max_value_bytes))
    source = itertools.cycle(pool)
    started = time.monotonic()
    started_at = time.time()
    sent = 0
    behind_max = 0
    for_sleep = time.sleep
    while sent < total:
        due = min(total, int((time.monotonic() - started) * args.rate))
        behind_max = max(behind_max, due - sent)
        while sent < due:
            rec = next(source)
            while True:
                try:
                    producer.produce(args.topic, rec.value, rec.key, headers=rec.headers, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.01)
            sent += 1
        producer.poll(0)
        for_sleep(TICK_S)
    elapsed = time.monotonic() - started
    left = producer.flush(120)
    result = {
        "produced": sent,
        "started_at": started_at,
        "ended_at": started_at + elapsed,
        "seconds": round(elapsed, 3),
        "rate": round(sent / elapsed, 1),
        "max_behind": behind_max,
        "undelivered": left,
        "errors": errors[:3],
    }
    if args.report:
        with open(args.report, "w") as f:
            json.dump(result, f)
    print(json.dumps(result))
    return 1 if left or errors else 0


if __name__ == "__main__":
    sys.exit(main())
