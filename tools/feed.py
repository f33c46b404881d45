"""`make feed RATE=200 N=10000`: realistic events into INPUT_TOPIC at a steady rate, for
`make run` to have something to process.

Events are the demo's: customers `C0000000`..., Zipf-distributed (a few customers are most
of the traffic, as in real streams), some without a key, and a share of bad records
(`--bad-ratio`, default 2%) cycling through every failure code: empty values, invalid
JSON, schema violations, unknown customers. One line a second says how many were sent; N=0
feeds until Ctrl-C. The customers must exist (`make demo` seeds them, or `--seed-customers`).
"""

from __future__ import annotations

import argparse
import sys
import time

from confluent_kafka import KafkaError, Message, Producer

from flows import connections
from flows.errors import SettingsError
from flows.settings import Settings
from tools import provision, sample

N_CUSTOMERS = 5000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.feed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Settings (KAFKA_*, INPUT_TOPIC) come from the environment; exit status 0 when every "
        "record was acknowledged, 1 otherwise, 2 for a bad setting.",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="records per second (default 200)")
    parser.add_argument("--records", type=int, default=10_000, help="how many; 0: until Ctrl-C (default 10000)")
    parser.add_argument("--bad-ratio", type=float, default=0.02, help="share of bad records (default 0.02)")
    parser.add_argument("--seed", type=int, default=7, help="of the random events (default 7)")
    parser.add_argument("--seed-customers", action="store_true", help=f"first write the {N_CUSTOMERS} customers")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.records < 0 or not 0 <= args.bad_ratio < 1:
        parser.error("--rate must be > 0, --records >= 0 and --bad-ratio in [0, 1)")
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: bad setting {exc}", file=sys.stderr)
        return 2
    if args.seed_customers:
        print(f"feed: {provision.seed_customers(settings, sample.customers(N_CUSTOMERS))} customers in PostgreSQL")
    producer = Producer(
        {
            **connections.kafka_common(settings),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "client.id": "feed",
        }
    )
    failures: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    total = args.records or sys.maxsize
    events = sample.events(
        total,
        N_CUSTOMERS,
        bad_ratio=args.bad_ratio,
        seed=args.seed,
        max_value_bytes=settings.max_value_bytes,
        large=False,
    )
    how_many = "until Ctrl-C" if not args.records else f"{args.records:,} records"
    print(f"feed: {args.rate:g} records/s to {settings.input_topic}, {how_many}")
    start = last = time.monotonic()
    sent = 0
    try:
        for rec in events:
            due = start + sent / args.rate
            while (now := time.monotonic()) < due:
                producer.poll(min(0.05, due - now))
            while True:
                try:
                    producer.produce(
                        settings.input_topic, rec.value, rec.key, headers=rec.headers, on_delivery=delivered
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
            sent += 1
            if time.monotonic() - last >= 1:
                last = time.monotonic()
                print(f"feed: {sent:,} sent, {sent / (last - start):,.0f}/s", flush=True)
    except KeyboardInterrupt:
        print("feed: stopped")
    left = producer.flush(30)
    print(f"feed: {sent - left - len(failures):,} of {sent:,} acknowledged")
    if failures:
        print(f"feed: {len(failures)} failed, first: {failures[0]}", file=sys.stderr)
    return 0 if not left and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
