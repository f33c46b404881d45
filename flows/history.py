"""ScyllaDB history sink (Apache Cassandra 5 in local runs): one `event_history` row per
input record, written with a prepared, idempotent INSERT (an upsert on the primary key).

Writes of a batch go out asynchronously, up to HISTORY_BATCH_ROWS rows per unlogged CQL
batch, with a bound on requests in flight, and the batch is done only when every write is
acknowledged. Only CQL that ScyllaDB and Cassandra 5 both accept is used.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import struct
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import msgspec
from cassandra import ConsistencyLevel, InvalidRequest
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.concurrent import execute_concurrent
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    RoundRobinPolicy,
    TokenAwarePolicy,
)
from cassandra.query import BatchStatement, BatchType, BoundStatement, PreparedStatement

from flows.model import HistoryRow
from flows.retry import Backoff, is_retriable, retry
from flows.settings import Settings
from flows.stats import STATS

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
        # the default waits up to 10 minutes between attempts; a node back after an outage
        # should be used within seconds
        reconnection_policy=ExponentialReconnectionPolicy(base_delay=0.5, max_delay=5.0),
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


# Rows go out in unlogged batches: one request for several rows saves the client and the
# server most of their per-request work (local stack: ~150 us of driver CPU and as much of
# Cassandra's per single-row request; per row, ~27 us of driver CPU in batches of 10, ~19 in
# batches of 50). Still idempotent upserts, and a failed batch is retried whole. The limits
# are settings (HISTORY_BATCH_ROWS, HISTORY_BATCH_BYTES): the defaults stay under ScyllaDB's
# batch warning (128 KiB) and under stock Cassandra's failure threshold (50 KiB; its
# warnings start at 5 KiB and 10 partitions, which the local stack raises to ScyllaDB's);
# a row too big for the budget goes alone, as a plain INSERT.
# what Cassandra counts for a row beyond its text values (cells, timestamps, clustering):
# measured 544 bytes for a row with 320 characters of text
ROW_OVERHEAD_BYTES = 224

if tuple(HistoryRow.__struct_fields__) != COLUMNS:  # rows are bound as msgspec.structs.astuple
    raise RuntimeError("HistoryRow's fields must be COLUMNS, in order")


def row_size(row: tuple[Any, ...]) -> int:
    """Cassandra's size of a row, estimated (characters for bytes: non-ASCII text counts
    short, which at worst draws a server warning; the failure threshold is 10x higher)."""
    return ROW_OVERHEAD_BYTES + sum(len(v) for v in row if type(v) is str)


def _one_group(row: tuple[Any, ...]) -> Hashable:
    return None


def plan_batches(rows: Sequence[tuple[Any, ...]], max_bytes: int, max_rows: int,
                 group_of: Callable[[tuple[Any, ...]], Hashable] = _one_group) -> list[list[tuple[Any, ...]]]:
    """Every row in exactly one batch: rows of one group, at most `max_rows` and
    `max_bytes` (estimated) per batch; a row over `max_bytes` alone."""
    batches: list[list[tuple[Any, ...]]] = []
    filling: dict[Hashable, tuple[list[tuple[Any, ...]], int]] = {}
    for row in rows:
        size = row_size(row)
        if size > max_bytes:
            batches.append([row])
            continue
        key = group_of(row)
        current = filling.get(key)
        if current is not None and (len(current[0]) >= max_rows or current[1] + size > max_bytes):
            batches.append(current[0])
            current = None
        if current is None:
            filling[key] = ([row], size)
        else:
            current[0].append(row)
            filling[key] = (current[0], current[1] + size)
    batches.extend(batch for batch, _ in filling.values())
    return batches


# Rows are serialized here rather than by PreparedStatement.bind(), which costs ~17 us a
# row (a named tuple and an encryption-policy check per value, calendar.timegm per
# timestamp) against ~2 us here: bind() was the largest single cost in the worker's profile.
# The bytes are the driver's own (tests/unit/test_history_batches.py compares them with
# cassandra.cqltypes); the writer uses this only when the prepared INSERT's columns have
# exactly these types and no column encryption, and bind() otherwise.
CQL_TYPES = ("varchar", "varchar", "int", "bigint", "varchar", "varchar", "varchar", "varchar", "timestamp",
             "timestamp", "varchar", "varchar")
_INT = struct.Struct(">i").pack
_BIGINT = struct.Struct(">q").pack
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MILLISECOND = dt.timedelta(milliseconds=1)


def _text(value: str | None) -> bytes | None:
    return None if value is None else value.encode()


def _timestamp(value: dt.datetime | None) -> bytes | None:
    """Whole milliseconds since the epoch, rounded down, naive meaning UTC: what
    cassandra.cqltypes.DateType.serialize computes with calendar.timegm."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return _BIGINT((value - _EPOCH) // _MILLISECOND)


def encode_row(row: tuple[Any, ...]) -> list[bytes | None]:
    """A history row (COLUMNS order) as the protocol's values for the prepared INSERT."""
    (event_id, source_topic, source_partition, source_offset, status, error_code, event_type, customer_id,
     occurred_at, processed_at, output_topic, payload) = row
    return [_text(event_id), _text(source_topic), _INT(source_partition), _BIGINT(source_offset), _text(status),
            _text(error_code), _text(event_type), _text(customer_id), _timestamp(occurred_at),
            _timestamp(processed_at), _text(output_topic), _text(payload)]


def can_encode(insert: PreparedStatement) -> bool:
    meta = insert.column_metadata or []
    return (getattr(insert, "column_encryption_policy", None) is None
            and tuple(c.name for c in meta) == COLUMNS
            and tuple(c.type.typename for c in meta) == CQL_TYPES)


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
        self._encode = can_encode(self.insert)
        if not self._encode:
            log.info("history rows bound by the driver (column encryption, or columns other than %s)", COLUMNS)

    def _bound(self, row: tuple[Any, ...]) -> BoundStatement:
        if not self._encode:
            return self.insert.bind(row)
        bound = BoundStatement(self.insert)
        bound.values = encode_row(row)
        return bound

    def _connect(self) -> Session:
        """A Cluster whose first connection fails shuts itself down for good, so a retry
        needs a new one."""
        if self.cluster.is_shutdown:
            self.cluster = connect(self.settings)
        return self.cluster.connect()

    def _primary_replica(self, row: tuple[Any, ...]) -> Hashable:
        """The node that owns the row's partition (event_id), so a batch of one group goes
        to a node that holds all its rows; None when the token map is not known (yet)."""
        token_map = self.cluster.metadata.token_map
        if token_map is None:
            return None
        replicas = token_map.get_replicas(self.settings.scylla_keyspace, token_map.token_class.from_key(
            row[0].encode()))
        return replicas[0] if replicas else None

    def _statements(self, rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, Any]]:
        several_nodes = len(self.cluster.metadata.all_hosts()) > 1
        statements: list[tuple[Any, Any]] = []
        for batch in plan_batches(rows, self.settings.history_batch_bytes, self.settings.history_batch_rows,
                                  self._primary_replica if several_nodes else _one_group):
            if len(batch) == 1:
                statements.append((self._bound(batch[0]), None))
                continue
            stmt = BatchStatement(BatchType.UNLOGGED)
            stmt.is_idempotent = True
            for row in batch:
                stmt.add(self._bound(row))
            statements.append((stmt, None))
        return statements

    def _write_once(self, statements: Sequence[tuple[Any, Any]]) -> None:
        results = execute_concurrent(
            self.session, statements, concurrency=self.concurrency, raise_on_first_error=True
        )
        for ok, result in results:  # raise_on_first_error raises already; belt and braces
            if not ok:
                raise result

    def write(self, rows: Sequence[HistoryRow]) -> None:
        if not rows:
            return
        started = time.perf_counter()
        tuples = [msgspec.structs.astuple(r) for r in rows]
        statements = self._statements(tuples)
        try:
            retry("cassandra", lambda: self._write_once(statements), self._backoff)
        except InvalidRequest:
            self._write_isolated(tuples)
        STATS.add_history(len(rows), time.perf_counter() - started)

    def _write_isolated(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """A batch the server refused for what it holds (`InvalidRequest`: a row over the
        largest mutation it takes, say): write its rows one by one, and a row refused on its
        own again without its payload, so that every record keeps a readable row."""
        statements = [(self._bound(row), None) for row in rows]
        results = execute_concurrent(self.session, statements, concurrency=self.concurrency,
                                     raise_on_first_error=False)
        for row, (ok, result) in zip(rows, results, strict=True):
            if ok:
                continue
            if not isinstance(result, InvalidRequest):
                if is_retriable(result):
                    self._write_one(row)
                    continue
                raise result
            degraded = (*row[:-1], None)  # payload is the last column
            log.warning("history row refused, written without its payload", extra={"fields": {
                "event_id": row[0], "topic": row[1], "partition": row[2], "offset": row[3],
                "error": str(result)[:300]}})
            self._write_one(degraded)
            STATS.add_history_degraded(1)

    def _write_one(self, row: tuple[Any, ...]) -> None:
        bound = self._bound(row)
        retry("cassandra", lambda: self.session.execute(bound), self._backoff)

    def close(self) -> None:
        self.cluster.shutdown()
