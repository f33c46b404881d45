"""Benchmark variant 1, the upper bound: a plain confluent-kafka loop that copies every
record of the input topic to the output topic, bytes, key and headers unchanged, no decode,
no lookups, no history. Partition p goes to partition p in order, so the benchmark can pair
each output with its input.

The producer has the dataflow's delivery guarantees (idempotent, acks=all, every delivery
checked), but waits for acknowledgements only once at the end instead of per batch.

    python -m bench.passthrough INPUT_TOPIC OUTPUT_TOPIC
"""

from __future__ import annotations

import argparse
import sys

from bench.kafkaloop import Copier, input_consumer, records
from flows.settings import Settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output")
    args = parser.parse_args()
    settings = Settings.from_env()
    consumer, pending = input_consumer(
        settings, args.input, "passthrough", **{"queued.max.messages.kbytes": 16384, "fetch.wait.max.ms": 50}
    )
    copier = Copier(settings, args.output, "passthrough")
    while pending:
        for msg in records(consumer, pending, 1000, 0.5):
            copier.copy(msg)
        copier.producer.poll(0)
    status = copier.finish()
    consumer.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
