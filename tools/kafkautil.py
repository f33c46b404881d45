"""Small Kafka helpers for the demo, tests, benchmark and operator tools: produce a list of
records with every delivery checked, and read a topic from the start to its current end."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from flows import connections
from flows.settings import Settings


def produce_all(
    settings: Settings, topic: str, records: Iterable[Any], extra: dict[str, Any] | None = None, on_progress: Any = None
) -> int:
    """Produce (key, value, headers) of each record (attributes or 3-tuples); raises if any
    delivery fails. Returns the count."""
    errors: list[str] = []
    conf = {
        **connections.kafka_common(settings),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "message.max.bytes": settings.max_value_bytes + 64 * 1024,
        "partitioner": "murmur2_random",
        **(extra or {}),
    }
    producer = Producer(conf)

    def cb(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(str(err))

    n = 0
    for rec in records:
        key, value, headers = (rec if isinstance(rec, tuple) else (rec.key, rec.value, rec.headers))[:3]
        while True:
            try:
                producer.produce(topic, value, key, headers=headers, on_delivery=cb)
                break
            except BufferError:
                producer.poll(0.1)
        n += 1
        if n % 10000 == 0:
            producer.poll(0)
            if on_progress:
                on_progress(n)
    remaining = producer.flush(120)
    if remaining or errors:
        raise RuntimeError(f"produce to {topic}: {remaining} unflushed, {len(errors)} failed, e.g. {errors[:1]}")
    return n


def read_topic(
    settings: Settings, topic: str, timeout: float = 60.0, committed_only: bool = False
) -> Iterator[Message]:
    """Every message of `topic` from the beginning up to the end offsets seen at the start.
    `committed_only` reads as a downstream consumer of exactly-once output must
    (`isolation.level=read_committed`: messages of aborted or open transactions are never
    seen); it stops at each partition's last stable offset."""
    consumer = Consumer(
        {
            **connections.kafka_common(settings),
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": committed_only,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        }
    )
    try:
        md = consumer.list_topics(topic, timeout=10).topics[topic]
        if md.error is not None:
            raise RuntimeError(f"topic {topic}: {md.error}")
        ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for p in md.partitions:
            lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > lo:
                ends[p] = hi
                starts.append(TopicPartition(topic, p, lo))
        if not starts:
            return
        consumer.assign(starts)
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: partitions {sorted(ends)} not read to the end in {timeout}s")
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        ends.pop(msg.partition(), None)  # committed_only: the last stable offset
                    continue
                p = msg.partition()
                if p in ends:
                    yield msg
                    if msg.offset() + 1 >= ends[p]:
                        del ends[p]
    finally:
        consumer.close()


def header(msg: Message, name: str) -> str | None:
    for k, v in msg.headers() or []:
        if k == name:
            return v.decode() if v is not None else None
    return None
