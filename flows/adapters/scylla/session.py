"""The history table on ScyllaDB (Apache Cassandra 5 in local runs): the session, the
schema (created when missing) and the start-up check. Only CQL both accept is used."""

from __future__ import annotations

import logging
import ssl
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    RoundRobinPolicy,
    TokenAwarePolicy,
)

from flows.core.model import HistoryRow
from flows.errors import PreflightError
from flows.settings import Settings

TABLE = "event_history"
COLUMNS = (
    "event_id",
    "source_topic",
    "source_partition",
    "source_offset",
    "status",
    "error_code",
    "event_type",
    "customer_id",
    "occurred_at",
    "processed_at",
    "output_topic",
    "payload",
)

CREATE_TABLE = f"""CREATE TABLE IF NOT EXISTS {{ks}}.{TABLE} (
    event_id text, source_topic text, source_partition int, source_offset bigint,
    status text, error_code text,
    event_type text, customer_id text, occurred_at timestamp, processed_at timestamp,
    output_topic text, payload text,
    PRIMARY KEY ((event_id), source_topic, source_partition, source_offset))"""


def connect(settings: Settings, connect_timeout: float | None = None) -> Cluster:
    """A Cluster for the settings (call `.connect()` on it); protocol v4, token-aware."""
    local_dc = settings.scylla_local_dc
    base = DCAwareRoundRobinPolicy(local_dc=local_dc) if local_dc else RoundRobinPolicy()
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(base),
        consistency_level=ConsistencyLevel.LOCAL_QUORUM if local_dc else ConsistencyLevel.ONE,
        request_timeout=30,
    )
    kwargs: dict[str, Any] = {}
    if settings.scylla_username:
        kwargs["auth_provider"] = PlainTextAuthProvider(settings.scylla_username, settings.scylla_password.get())
    if settings.scylla_ssl:
        ctx = ssl.create_default_context(cafile=settings.scylla_ssl_ca)
        kwargs["ssl_context"] = ctx
    return Cluster(
        list(settings.scylla_hosts),
        port=settings.scylla_port,
        protocol_version=4,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=connect_timeout or settings.startup_timeout_seconds,
        # the default waits up to 10 minutes between attempts; a node back after an outage
        # should be used within seconds
        reconnection_policy=ExponentialReconnectionPolicy(base_delay=0.5, max_delay=5.0),
        **kwargs,
    )


def ensure_schema(session: Session, settings: Settings) -> None:
    """Create the keyspace and table when missing (replication from settings)."""
    ks = settings.scylla_keyspace  # validated as a CQL identifier by Settings
    if settings.scylla_replication_class == "NetworkTopologyStrategy":
        replication = (
            f"{{'class': 'NetworkTopologyStrategy', '{settings.scylla_local_dc}': "
            f"{settings.scylla_replication_factor}}}"
        )
    else:
        replication = f"{{'class': 'SimpleStrategy', 'replication_factor': {settings.scylla_replication_factor}}}"
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}", timeout=60)
    session.execute(CREATE_TABLE.format(ks=ks), timeout=60)


def insert_cql(settings: Settings) -> str:
    """The history INSERT, with the row TTL when one is set."""
    ttl = f" USING TTL {settings.history_ttl_seconds}" if settings.history_ttl_seconds else ""
    cols = ", ".join(COLUMNS)
    marks = ", ".join("?" for _ in COLUMNS)
    # the keyspace is validated as a CQL identifier by Settings; values are bound markers
    return f"INSERT INTO {settings.scylla_keyspace}.{TABLE} ({cols}) VALUES ({marks}){ttl}"  # noqa: S608


if tuple(HistoryRow.__struct_fields__) != COLUMNS:  # rows are bound as msgspec.structs.astuple
    raise RuntimeError("HistoryRow's fields must be COLUMNS, in order")


def check_cql(settings: Settings) -> None:
    """The CQL store answers within the start-up timeout, or PreflightError."""
    cluster = connect(settings, connect_timeout=settings.startup_timeout_seconds)
    driver_log = logging.getLogger("cassandra")
    level = driver_log.level
    driver_log.setLevel(logging.CRITICAL)  # our one line says it; the driver's tracebacks would not help
    try:
        session = cluster.connect()
        session.execute("SELECT release_version FROM system.local", timeout=settings.startup_timeout_seconds)
    except Exception as exc:
        hosts = ",".join(settings.scylla_hosts)
        raise PreflightError(
            f"ScyllaDB/Cassandra at {hosts}:{settings.scylla_port} unreachable: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    finally:
        cluster.shutdown()
        driver_log.setLevel(level)
