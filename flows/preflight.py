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


def check_postgres(settings: Settings) -> None:
    import psycopg

    from flows.pg import CUSTOMERS_TABLE

    try:
        with psycopg.connect(settings.pg_dsn.get(), connect_timeout=max(1, int(settings.startup_timeout_seconds)),
                             **settings.pg_connect_kwargs()) as conn:
            conn.execute("SELECT 1")
            found = conn.execute("SELECT to_regclass(%s)", (CUSTOMERS_TABLE,)).fetchone()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PreflightError(f"PostgreSQL at {redact_dsn(settings.pg_dsn.get())} unreachable: {first}") from None
    if not found or found[0] is None:
        raise PreflightError(f"PostgreSQL table '{CUSTOMERS_TABLE}' does not exist in "
                             f"{redact_dsn(settings.pg_dsn.get())}")


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


def run_checks(settings: Settings) -> list[int]:
    """All checks; returns the input topic's partition ids."""
    counts = check_kafka(settings, [settings.input_topic, settings.output_topic, settings.failure_topic])
    check_postgres(settings)
    check_cql(settings)
    return list(range(counts[settings.input_topic]))


def checked_partitions(settings: Settings, exit: Callable[[int], None] = os._exit) -> list[int]:
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


def checked_partitions_once(settings: Settings) -> Callable[[], list[int]]:
    """`checked_partitions` for the source's `list_parts`, which Bytewax calls on every
    worker: the checks run once per process, the other workers wait for and share the
    answer (`functools.cache` would let worker threads run them concurrently)."""
    lock = threading.Lock()
    answer: list[list[int]] = []

    def partitions() -> list[int]:
        with lock:
            if not answer:
                answer.append(checked_partitions(settings))
            return list(answer[0])

    return partitions
