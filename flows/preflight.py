"""Start-up checks: each dependency answers within a timeout before the flow starts.

A failure is one log line naming the dependency, then exit status 2 (the contract's status
for a bad setting or unreachable dependency), before any record is read.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

from flows.settings import Settings, redact_dsn
from flows.sizes import TopicLimits, TopicSize, size_problems

log = logging.getLogger(__name__)


class PreflightError(RuntimeError):
    pass


def check_kafka(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Partition count of each topic; raises PreflightError if a topic is missing."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**settings.kafka_common(), "socket.connection.setup.timeout.ms": 5000})
    try:
        md = admin.list_topics(timeout=settings.startup_timeout_seconds)
    except Exception as exc:
        raise PreflightError(f"Kafka at {settings.kafka_bootstrap_servers} unreachable within "
                             f"{settings.startup_timeout_seconds:g}s: {exc}") from None
    counts: dict[str, int] = {}
    for topic in topics:
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise PreflightError(f"Kafka topic '{topic}' does not exist on {settings.kafka_bootstrap_servers}")
        counts[topic] = len(meta.partitions)
    return counts


def topic_sizes(settings: Settings, topics: dict[str, str]) -> dict[str, TopicSize]:
    """Each topic's effective `max.message.bytes` ({setting name: topic name} in); raises
    PreflightError when a topic's configuration can't be read, or a dead letter without a
    key could not be written (a compacted failure topic refuses records without a key)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        ConfigResource,
        ConfigSource,
        ResourceType,
    )

    admin = AdminClient({**settings.kafka_common(), "socket.connection.setup.timeout.ms": 5000})
    resources = {name: ConfigResource(ResourceType.TOPIC, topic) for name, topic in topics.items()}
    futures = admin.describe_configs(list(resources.values()), request_timeout=settings.startup_timeout_seconds)
    by_topic = {r.name: f for r, f in futures.items()}
    sizes: dict[str, TopicSize] = {}
    for name, topic in topics.items():
        try:
            configs = by_topic[topic].result(timeout=settings.startup_timeout_seconds + 5)
            entry = configs["max.message.bytes"]
            max_bytes = int(entry.value)
            policy = str(configs["cleanup.policy"].value) if "cleanup.policy" in configs else "delete"
        except Exception as exc:
            raise PreflightError(f"can't read the configuration of Kafka topic '{topic}' ({name}): {exc} (the flow "
                                 "needs DescribeConfigs on its topics to check their sizes)") from None
        source = getattr(entry.source, "value", entry.source)
        override = source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
        sizes[name] = TopicSize(name, topic, max_bytes, broker_default=not override)
        if name == "FAILURE_TOPIC" and "compact" in policy:
            raise PreflightError(f"FAILURE_TOPIC {topic} has cleanup.policy={policy}: a compacted topic refuses "
                                 "records without a key, and dead letters keep the input key, null included")
    return sizes


def check_topic_sizes(settings: Settings) -> TopicLimits:
    """The size rule (flows.sizes): every record the input topic accepts fits the failure
    topic with the failure headers and the output topic with what enrichment adds."""
    sizes = topic_sizes(settings, {"INPUT_TOPIC": settings.input_topic, "OUTPUT_TOPIC": settings.output_topic,
                                   "FAILURE_TOPIC": settings.failure_topic})
    problems = size_problems(settings.max_value_bytes, sizes["INPUT_TOPIC"], sizes["OUTPUT_TOPIC"],
                             sizes["FAILURE_TOPIC"])
    if problems:
        raise PreflightError("topic sizes do not fit: " + "; ".join(problems))
    return TopicLimits(output=sizes["OUTPUT_TOPIC"].max_bytes, failure=sizes["FAILURE_TOPIC"].max_bytes)


def check_postgres(settings: Settings) -> None:
    """PostgreSQL answers, the customers table exists, and the lookup query itself runs
    (its columns and the SELECT privilege: a fault there shows now, not at a record)."""
    import psycopg

    from flows.pg import CUSTOMERS_TABLE, LOOKUP_SQL

    where = redact_dsn(settings.pg_dsn.get())
    try:
        with psycopg.connect(settings.pg_dsn.get(), connect_timeout=max(1, int(settings.startup_timeout_seconds)),
                             **settings.pg_connect_kwargs()) as conn:
            conn.execute("SELECT 1")
            found = conn.execute("SELECT to_regclass(%s)", (CUSTOMERS_TABLE,)).fetchone()
            if found and found[0] is not None:
                try:
                    conn.execute(LOOKUP_SQL, ([],)).fetchall()
                except psycopg.DatabaseError as exc:
                    raise PreflightError(f"PostgreSQL at {where}: the customer lookup fails: {_first_line(exc)}") \
                        from None
    except PreflightError:
        raise
    except Exception as exc:
        raise PreflightError(f"PostgreSQL at {where} unreachable: {_first_line(exc)}") from None
    if not found or found[0] is None:
        raise PreflightError(f"PostgreSQL table '{CUSTOMERS_TABLE}' does not exist in {where}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_kafka_clients(settings: Settings) -> None:
    """The producer settings a rare record needs are usable here: the zstd producer that
    sends a dead letter too large to go plain (flows.delivery) is built only when one comes."""
    from confluent_kafka import KafkaException, Producer

    try:
        Producer({**settings.kafka_common(), "compression.type": "zstd"}).flush(0)
    except KafkaException as exc:
        raise PreflightError(f"the Kafka client can't compress with zstd: {exc}") from None


def check_cql(settings: Settings) -> None:
    from flows.history import connect

    cluster = connect(settings, connect_timeout=settings.startup_timeout_seconds)
    driver_log = logging.getLogger("cassandra")
    level = driver_log.level
    driver_log.setLevel(logging.CRITICAL)  # our one line says it; the driver's tracebacks would not help
    try:
        session = cluster.connect()
        session.execute("SELECT release_version FROM system.local", timeout=settings.startup_timeout_seconds)
    except Exception as exc:
        hosts = ",".join(settings.scylla_hosts)
        raise PreflightError(f"ScyllaDB/Cassandra at {hosts}:{settings.scylla_port} unreachable: "
                             f"{type(exc).__name__}: {str(exc)[:200]}") from None
    finally:
        cluster.shutdown()
        driver_log.setLevel(level)


class Checked:
    """What the start-up checks found: the input topic's partitions and the topics' limits."""

    def __init__(self, partitions: list[int], limits: TopicLimits) -> None:
        self.partitions = partitions
        self.limits = limits


def run_checks(settings: Settings) -> Checked:
    counts = check_kafka(settings, [settings.input_topic, settings.output_topic, settings.failure_topic])
    limits = check_topic_sizes(settings)
    check_kafka_clients(settings)
    check_postgres(settings)
    check_cql(settings)
    return Checked(list(range(counts[settings.input_topic])), limits)


def checked(settings: Settings, exit: Callable[[int], None] = os._exit) -> Checked:
    """`run_checks`, or one error line and exit status 2."""
    try:
        return run_checks(settings)
    except PreflightError as exc:
        log.error("start-up check failed: %s", exc, extra={"fields": {"exit_status": 2}})
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        # os._exit: we are inside Bytewax's runtime, which would turn an exception into a
        # panic with a traceback and status 1; nothing has been opened yet
        exit(2)
        raise


class Preflight:
    """The checks, run once per process by whichever part needs their answer first (the
    source listing partitions, a worker building its sink or its enrich step: Bytewax
    does not say in which order), the others waiting for it and sharing it."""

    def __init__(self, settings: Settings, run: Callable[[Settings], Checked] = checked) -> None:
        self._settings = settings
        self._run = run
        self._lock = threading.Lock()
        self._answer: Checked | None = None

    def result(self) -> Checked:
        with self._lock:
            if self._answer is None:
                self._answer = self._run(self._settings)
            return self._answer

    def partitions(self) -> list[int]:
        return list(self.result().partitions)

    def limits(self) -> TopicLimits:
        return self.result().limits
