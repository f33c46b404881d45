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
import json
import sys
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from flows.adapters.kafka.config import producer_config
from flows.settings import Settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output")
    args = parser.parse_args()
    settings = Settings.from_env()
    consumer = Consumer(
        {
            **settings.kafka_common(),
            "group.id": "bench-passthrough-unused",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "queued.max.messages.kbytes": 16384,
            "fetch.wait.max.ms": 50,
        }
    )
    producer = Producer({**producer_config(settings), "client.id": "bench-passthrough"})
    partitions = list(consumer.list_topics(args.input, timeout=10).topics[args.input].partitions)
    consumer.assign([TopicPartition(args.input, p, OFFSET_BEGINNING) for p in partitions])
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    started = time.monotonic()
    pending = set(partitions)
    copied = 0
    output, produce, poll = args.output, producer.produce, producer.poll
    while pending:
        for msg in consumer.consume(1000, 0.5):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                raise KafkaException(err)
            while True:
                try:
                    produce(
                        output,
                        msg.value(),
                        msg.key(),
                        partition=msg.partition(),
                        headers=msg.headers(),
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    poll(0.05)
            copied += 1
        poll(0)
    left = producer.flush(120)
    consumer.close()
    print(
        json.dumps(
            {
                "copied": copied,
                "seconds": round(time.monotonic() - started, 3),
                "undelivered": left,
                "errors": errors[:3],
            }
        )
    )
    return 1 if left or errors else 0


if __name__ == "__main__":
    sys.exit(main())
