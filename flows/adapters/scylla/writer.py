"""Writing history rows: one `event_history` row per input record, with a prepared,
idempotent INSERT (an upsert on the primary key), asynchronously, up to
HISTORY_BATCH_ROWS rows per unlogged batch (`flows.adapters.scylla.batching`), at most
HISTORY_CONCURRENCY requests in flight; a batch is done only when every write is
acknowledged. A batch the server refuses for what it holds is written row by row, and a
row refused on its own again without its payload, so every record keeps a readable row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import msgspec
from cassandra import InvalidRequest
from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent
from cassandra.query import BatchStatement, BatchType, BoundStatement

from flows.adapters.scylla.batching import one_group, plan_batches
from flows.adapters.scylla.codec import can_encode, encode_row
from flows.adapters.scylla.errors import classify
from flows.adapters.scylla.session import COLUMNS, connect, ensure_schema, insert_cql
from flows.core.model import HistoryRow, Outcome
from flows.retry import Kind, Retries
from flows.settings import Settings
from flows.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class HistoryWriter:
    """Writes rows with bounded concurrency; returns when all are acknowledged."""

    def __init__(self, settings: Settings, retries: Retries | None = None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.concurrency = settings.history_concurrency
        self._retries = retries or Retries(settings.retry_deadline_seconds)
        self._metrics = metrics
        self.cluster = connect(settings)
        self.session = self._retry(self._connect)
        self._retry(lambda: ensure_schema(self.session, settings))
        self.insert = self._retry(lambda: self.session.prepare(insert_cql(settings)))
        self.insert.is_idempotent = True
        self._encode = can_encode(self.insert)
        if not self._encode:
            log.info("history rows bound by the driver (column encryption, or columns other than %s)", COLUMNS)

    def _retry(self, fn: Callable[[], T]) -> T:
        return self._retries.call("cassandra", fn, classify)

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
        replicas = token_map.get_replicas(
            self.settings.scylla_keyspace, token_map.token_class.from_key(row[0].encode())
        )
        return replicas[0] if replicas else None

    def _statements(self, rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, Any]]:
        several_nodes = len(self.cluster.metadata.all_hosts()) > 1
        statements: list[tuple[Any, Any]] = []
        for batch in plan_batches(
            rows,
            self.settings.history_batch_bytes,
            self.settings.history_batch_rows,
            self._primary_replica if several_nodes else one_group,
        ):
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
        results = execute_concurrent(self.session, statements, concurrency=self.concurrency, raise_on_first_error=True)
        for ok, result in results:  # raise_on_first_error raises already; belt and braces
            if not ok:
                raise result

    def write(self, rows: Sequence[HistoryRow]) -> None:
        """Write every row; returns when each is acknowledged."""
        if not rows:
            return
        started = time.perf_counter()
        tuples = [msgspec.structs.astuple(r) for r in rows]
        statements = self._statements(tuples)
        try:
            self._retry(lambda: self._write_once(statements))
        except InvalidRequest:
            self._write_isolated(tuples)
        if self._metrics is not None:
            self._metrics.add_written("history", len(rows), time.perf_counter() - started)

    def _write_isolated(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """A batch the server refused for what it holds (`InvalidRequest`: a row over the
        largest mutation it takes, say): write its rows one by one, and a row refused on its
        own again without its payload, so that every record keeps a readable row."""
        statements = [(self._bound(row), None) for row in rows]
        results = execute_concurrent(self.session, statements, concurrency=self.concurrency, raise_on_first_error=False)
        for row, (ok, result) in zip(rows, results, strict=True):
            if ok:
                continue
            if not isinstance(result, InvalidRequest):
                if classify(result) is Kind.RETRIABLE:
                    self._write_one(row)
                    continue
                raise result
            degraded = (*row[:-1], None)  # payload is the last column
            log.warning(
                "history row refused, written without its payload",
                extra={
                    "fields": {
                        "event_id": row[0],
                        "topic": row[1],
                        "partition": row[2],
                        "offset": row[3],
                        "error": str(result)[:300],
                    }
                },
            )
            self._write_one(degraded)
            if self._metrics is not None:
                self._metrics.add_degraded("history", 1)

    def _write_one(self, row: tuple[Any, ...]) -> None:
        bound = self._bound(row)
        self._retry(lambda: self.session.execute(bound))

    def close(self) -> None:
        """Shut the session down."""
        self.cluster.shutdown()


class HistoryOutput:
    """The history output: every outcome's row, written when the delivery flushes (so the
    rows are acknowledged while the Kafka messages handed over before them travel)."""

    def __init__(self, writer: HistoryWriter) -> None:
        self.writer = writer
        self._rows: list[HistoryRow] = []

    def write(self, items: Sequence[Outcome]) -> None:
        """Take the items' rows."""
        self._rows += [r.history for r in items]

    def flush(self) -> list[Outcome]:
        """Write the rows taken; nothing to re-route."""
        rows, self._rows = self._rows, []
        self.writer.write(rows)
        return []

    def close(self) -> None:
        """The writer's session is closed with the worker's other clients."""
