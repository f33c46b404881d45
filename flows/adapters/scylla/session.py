"""The history table on ScyllaDB (Apache Cassandra 5 in local runs): the session, the
schema (created when missing) and the start-up check. Only CQL both accept is used."""

from __future__ import annotations

import atexit
import logging
import re
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

from flows.connections import cql_ssl_context
from flows.core.model import HistoryRow
from flows.errors import PreflightError
from flows.settings import Settings

TABLE = "event_history"


def _skip_idle_loop_join() -> None:
    """At exit, when every Cluster of the process was shut down, don't let the driver join
    its event-loop thread: that join waits up to 5 s (about half the runs) for a loop with
    nothing left to do, so `ops trace` and every short-lived CQL user sat idle at exit. The
    thread is a daemon; with no cluster open there is nothing it could still finish."""
    import cassandra.cluster as driver

    try:
        from cassandra.io import libevreactor
    except ImportError:  # another reactor: nothing to skip
        return
    if not driver._clusters_for_shutdown:
        libevreactor._global_loop = None


# registered after the driver's own exit hooks, so it runs before them
atexit.register(_skip_idle_loop_join)
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
    ctx = cql_ssl_context(settings)
    if ctx is not None:
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
        raise PreflightError(connect_failure(settings, exc)) from None
    finally:
        cluster.shutdown()
        driver_log.setLevel(level)


def connect_failure(settings: Settings, exc: Exception) -> str:
    """One line for a failed connection: where, and each host's reason."""
    where = f"{','.join(settings.scylla_hosts)}:{settings.scylla_port}{', TLS' if settings.scylla_ssl else ''}"
    return f"ScyllaDB/Cassandra at {where}: can't connect: {_reasons(exc, settings.scylla_ssl)}"


def _reasons(exc: Exception, tls: bool) -> str:
    """The driver's NoHostAvailable as one line: each host and its last error (a TLS
    failure's reason is in there, e.g. "certificate verify failed: IP address mismatch")."""
    errors = getattr(exc, "errors", None)
    if not isinstance(errors, dict) or not errors:
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    parts = []
    for host, err in list(errors.items())[:3]:
        text = str(err.args[1]) if isinstance(err, OSError) and len(err.args) > 1 else str(err)
        text = re.sub(r"^Tried connecting to \[.*?\]\. Last error: ", "", text)
        parts.append(f"{host}: {text[:300]}")
    why = "; ".join(parts)
    if tls and re.search(
        r"EOF occurred in violation of protocol|ALERT_(INTERNAL_ERROR|BAD_CERTIFICATE|UNKNOWN_CA|CERTIFICATE)", why
    ):
        why += (
            " (the server ended the TLS handshake: it refused the client certificate, expired or not signed "
            "by a CA it trusts, or it requires one: SCYLLA_SSL_CERTFILE)"
        )
    return why
