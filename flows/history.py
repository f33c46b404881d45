"""ScyllaDB history sink (Apache Cassandra 5 in local runs): one `event_history` row per
input record, written with a prepared, idempotent INSERT (an upsert on the primary key).

Writes of a batch go out asynchronously with a bound on requests in flight, and the batch
is done only when every write is acknowledged. Only CQL that ScyllaDB and Cassandra 5 both
accept is used.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.policies import DCAwareRoundRobinPolicy, RoundRobinPolicy, TokenAwarePolicy

from flows.model import HistoryRow, Routed
from flows.retry import Backoff, retry
from flows.settings import Settings

log = logging.getLogger(__name__)

TABLE = "event_history"
COLUMNS = ("event_id", "source_topic", "source_partition", "source_offset", "status", "error_code",
           "event_type", "customer_id", "occurred_at", "processed_at", "output_topic", "payload")

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
        list(settings.scylla_hosts), port=settings.scylla_port, protocol_version=4,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=connect_timeout or settings.startup_timeout_seconds,
        **kwargs,
    )


def ensure_schema(session: Session, settings: Settings) -> None:
    """Create the keyspace and table when missing (replication from settings)."""
    ks = settings.scylla_keyspace  # validated as a CQL identifier by Settings
    if settings.scylla_replication_class == "NetworkTopologyStrategy":
        replication = f"{{'class': 'NetworkTopologyStrategy', '{settings.scylla_local_dc}': " \
                      f"{settings.scylla_replication_factor}}}"
    else:
        replication = f"{{'class': 'SimpleStrategy', 'replication_factor': {settings.scylla_replication_factor}}}"
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}", timeout=60)
    session.execute(CREATE_TABLE.format(ks=ks), timeout=60)


def insert_cql(settings: Settings) -> str:
    ttl = f" USING TTL {settings.history_ttl_seconds}" if settings.history_ttl_seconds else ""
    cols = ", ".join(COLUMNS)
    marks = ", ".join("?" for _ in COLUMNS)
    # the keyspace is validated as a CQL identifier by Settings; values are bound markers
    return f"INSERT INTO {settings.scylla_keyspace}.{TABLE} ({cols}) VALUES ({marks}){ttl}"  # noqa: S608


class HistoryWriter:
    """Writes rows with bounded concurrency; returns when all are acknowledged."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.concurrency = settings.history_concurrency
        self._backoff = Backoff(settings.retry_deadline_seconds)
        self.cluster = connect(settings)
        self.session = retry("cassandra", self._connect, self._backoff)
        retry("cassandra", lambda: ensure_schema(self.session, settings), self._backoff)
        self.insert = retry("cassandra", lambda: self.session.prepare(insert_cql(settings)), self._backoff)
        self.insert.is_idempotent = True

    def _connect(self) -> Session:
        """A Cluster whose first connection fails shuts itself down for good, so a retry
        needs a new one."""
        if self.cluster.is_shutdown:
            self.cluster = connect(self.settings)
        return self.cluster.connect()

    def _write_once(self, rows: Sequence[tuple[Any, ...]]) -> None:
        results = execute_concurrent_with_args(
            self.session, self.insert, rows, concurrency=self.concurrency, raise_on_first_error=True
        )
        for ok, result in results:  # raise_on_first_error raises already; belt and braces
            if not ok:
                raise result

    def write(self, rows: Sequence[HistoryRow]) -> None:
        if not rows:
            return
        params = [tuple(getattr(r, c) for c in COLUMNS) for r in rows]
        retry("cassandra", lambda: self._write_once(params), self._backoff)

    def close(self) -> None:
        self.cluster.shutdown()


class _HistoryPartition(StatelessSinkPartition[Routed]):
    def __init__(self, writer: HistoryWriter) -> None:
        self.writer = writer

    def write_batch(self, items: list[Routed]) -> None:
        self.writer.write([r.history for r in items])

    def close(self) -> None:
        self.writer.close()


class HistorySink(DynamicSink[Routed]):
    """One CQL session per worker, opened when the worker builds the sink."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _HistoryPartition:
        return _HistoryPartition(HistoryWriter(self.settings))
