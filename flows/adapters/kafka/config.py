"""librdkafka settings of the pipeline's consumers and producers."""

from __future__ import annotations

from typing import Any

from flows import connections
from flows.core.sizes import topic_sizes_to_create
from flows.settings import Settings

PREFETCH_KBYTES = 4096  # a few source batches of ordinary records


def consumer_config(settings: Settings) -> dict[str, Any]:
    """A consumer that joins no group and commits nothing: positions are the flow's own."""
    return {
        **connections.kafka_common(settings),
        "group.id": "enrichment-dataflow-unused",  # required by the client; no group is joined
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # an end reported with the consumer's position there, past transaction markers and
        # aborted records: what is committed when the input pauses (and how STOP_AT_END knows)
        "enable.partition.eof": True,
        # prefetch (the consumer's queue, whatever its number of partitions): a few source
        # batches, not the 64 MiB default (memory stays flat), but at least two of the
        # largest records, so large records stream
        "queued.max.messages.kbytes": max(PREFETCH_KBYTES, 2 * settings.max_value_bytes // 1024 + 64),
        # a full prefetch queue makes librdkafka wait this long before fetching again (its
        # default, 1 s, starves a stream of large records that fill the queue in a few)
        "fetch.queue.backoff.ms": 5,
        "fetch.wait.max.ms": 50,
        "socket.keepalive.enable": True,
        # only when the resume position is gone (retention deleted it while the flow was
        # down): start from the oldest record kept, never skip to the end
        "auto.offset.reset": "earliest",
    }


def producer_config(settings: Settings) -> dict[str, Any]:
    """An idempotent producer that waits for every replica and gives up at the deadline."""
    return {
        **connections.kafka_common(settings),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "compression.type": "none",
        # Java clients' default, so keyed records land where other producers put them
        "partitioner": "murmur2_random",
        # the writer sets these from the topics' sizes; this default fits the topics the
        # project creates (flows.core.sizes)
        "message.max.bytes": topic_sizes_to_create(settings.max_value_bytes)[1],
        "batch.size": 1_000_000,
        # librdkafka keeps retrying a delivery until this expires: the same deadline as
        # every other dependency; past it the writer raises
        "message.timeout.ms": int(settings.retry_deadline_seconds * 1000),
    }


METADATA_REFRESH_MS = 300_000  # librdkafka's default topic.metadata.refresh.interval.ms


def metadata_refresh_s(settings: Settings) -> float:
    """How often the clients refresh the topics' metadata (KAFKA_CLIENT_TOPIC_METADATA_
    REFRESH_INTERVAL_MS, librdkafka's default 5 minutes): a consumer group notices
    partitions added to its topics that often, and so does at-least-once's input."""
    value = dict(settings.kafka_client_properties).get("topic.metadata.refresh.interval.ms")
    try:
        ms = int(value) if value is not None else METADATA_REFRESH_MS
    except ValueError:
        ms = METADATA_REFRESH_MS
    return max(ms, 1000) / 1000
