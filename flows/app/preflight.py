"""The start-up checks, each adapter's own, within STARTUP_TIMEOUT_SECONDS each: a fault
an operator must fix shows now, as one line, not at record ten million."""

from __future__ import annotations

from dataclasses import dataclass

from flows.adapters.kafka.topics import check_kafka, check_kafka_clients, check_topic_sizes, topic_sizes
from flows.adapters.postgres.changes import check_installed
from flows.adapters.postgres.table import check_postgres
from flows.adapters.registry.checks import check_formats
from flows.adapters.scylla.session import check_cql
from flows.core.sizes import ADDED_ROOM_BYTES, TopicLimits, value_fits
from flows.errors import PreflightError
from flows.settings import Settings


@dataclass(frozen=True)
class Checked:
    """What the checks found: the input topic's partitions and the output topics' limits."""

    partitions: list[int]
    limits: TopicLimits


def dataflow_checks(settings: Settings) -> Checked:
    """Kafka (the three topics exist and are sized for each other, the clients work),
    PostgreSQL (the lookup query runs) and the CQL store (it answers)."""
    counts = check_kafka(settings, [settings.input_topic, settings.output_topic, settings.failure_topic])
    limits = check_topic_sizes(settings)
    check_kafka_clients(settings)
    check_postgres(settings)
    if settings.cache_invalidation == "notify":
        check_installed(settings)
    check_cql(settings)
    check_formats(settings)
    return Checked(list(range(counts[settings.input_topic])), limits)


def lambda_checks(settings: Settings) -> TopicLimits:
    """The Lambda's checks: it can't know every topic its event source mapping reads, so
    the output and failure topics must each take a value of MAX_VALUE_BYTES plus what the
    pipeline adds; a record larger than that still gets through (the outputs' fallbacks)."""
    check_kafka(settings, [settings.output_topic, settings.failure_topic])
    sizes = topic_sizes(settings, {"OUTPUT_TOPIC": settings.output_topic, "FAILURE_TOPIC": settings.failure_topic})
    need = value_fits(settings.max_value_bytes) + ADDED_ROOM_BYTES
    small = [
        f"{s.describe()}, needs {need} (a value of MAX_VALUE_BYTES={settings.max_value_bytes} plus "
        f"{ADDED_ROOM_BYTES} for what the pipeline adds)"
        for s in sizes.values()
        if s.max_bytes < need
    ]
    if small:
        raise PreflightError("topic sizes do not fit: " + "; ".join(small))
    check_postgres(settings)
    if settings.cache_invalidation == "notify":
        check_installed(settings)
    check_formats(settings)
    return TopicLimits(output=sizes["OUTPUT_TOPIC"].max_bytes, failure=sizes["FAILURE_TOPIC"].max_bytes)
