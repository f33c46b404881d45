"""What the benchmark's own Kafka programs (passthrough, floor, naive) share: a consumer
that reads every partition of the input topic from the start and tells when each is
drained, and a copier that produces records to an output topic unchanged."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from flows import connections
from flows.adapters.kafka.config import producer_config
from flows.settings import Settings


def input_consumer(settings: Settings, topic: str, name: str, **conf: Any) -> tuple[Consumer, set[int]]:
    """A consumer assigned to every partition of `topic` from its beginning, reporting the
    end of each; and the partitions."""
    consumer = Consumer(
        {
            **connections.kafka_common(settings),
            "group.id": f"bench-{name}-unused",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **conf,
        }
    )
    partitions = set(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
    return consumer, partitions


def records(consumer: Consumer, pending: set[int], batch: int, timeout: float) -> Iterator[Message]:
    """The records of one `consume` call; a partition that reached its end leaves `pending`."""
    for msg in consumer.consume(batch, timeout):
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                pending.discard(msg.partition())
                continue
            raise KafkaException(err)
        yield msg


class Copier:
    """Copies records to the same partition of `output` with the dataflow's producer
    settings (idempotent, acks=all), every delivery checked, waiting for acknowledgements
    only at the end (`finish`)."""

    def __init__(self, settings: Settings, output: str, name: str) -> None:
        self.producer = Producer({**producer_config(settings), "client.id": f"bench-{name}"})
        self.output = output
        self.errors: list[str] = []
        self.copied = 0
        self.started = time.monotonic()

    def _delivered(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def copy(self, msg: Message) -> None:
        """Copy `msg` (value, key, headers), waiting for room in the producer's queue."""
        while True:
            try:
                self.producer.produce(
                    self.output,
                    msg.value(),
                    msg.key(),
                    partition=msg.partition(),
                    headers=msg.headers(),
                    on_delivery=self._delivered,
                )
                break
            except BufferError:
                self.producer.poll(0.05)
        self.copied += 1

    def finish(self) -> int:
        """Wait for every acknowledgement, print the summary line; the exit status."""
        left = self.producer.flush(120)
        summary = {
            "copied": self.copied,
            "seconds": round(time.monotonic() - self.started, 3),
            "undelivered": left,
            "errors": self.errors[:3],
        }
        print(json.dumps(summary))
        return 1 if left or self.errors else 0
