"""Writing history rows: one `event_history` row per input record, with a prepared,
idempotent INSERT (an upsert on the primary key), asynchronously, up to
HISTORY_BATCH_ROWS rows per unlogged batch (`flows.adapters.scylla.batching`), at most
HISTORY_CONCURRENCY requests in flight per round; a round (`start`) is done only when every
write is acknowledged (`finish`), and a worker may have a round in flight while it builds the
next. A failed request is sent again under the retry policy; a batch the server refuses for
what it holds is written row by row, and a row refused on its own again without its
payload, so every record keeps a readable row.
"""

from __future__ import annotations

import collections
import logging
import threading
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
from flows.errors import RoundAborted
from flows.pause import PauseWatch
from flows.retry import Kind, Retries
from flows.settings import Settings
from flows.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Round:
    """Statements sent with at most `limit` awaiting acknowledgement at once; `wait`
    returns each one's error (None: acknowledged). Sending is a loop, not a recursion, so
    requests failing inline (no host available) don't deepen the stack."""

    def __init__(
        self, session: Session, statements: Sequence[Any], limit: int, halted: Callable[[], bool] | None = None
    ) -> None:
        self._session = session
        self._halted = halted  # checked before each request: sending stops once it says so
        self._statements = statements
        self.errors: list[BaseException | None] = [None] * len(statements)
        self._limit = limit
        self._next = self._in_flight = 0
        self._left = len(statements)
        self._pumping = False
        self._lock = threading.Lock()
        self._done = threading.Event()
        if not statements:
            self._done.set()
        self._pump()

    def _pump(self) -> None:
        with self._lock:
            if self._pumping:
                return
            self._pumping = True
        while True:
            with self._lock:
                if self._next >= len(self._statements) or self._in_flight >= self._limit:
                    self._pumping = False
                    return
                idx = self._next
                self._next += 1
                self._in_flight += 1
            if self._halted is not None and self._halted():
                self._failed(Paused("the process was paused: the round's remaining rows are not sent"), idx)
                continue
            try:
                future = self._session.execute_async(self._statements[idx])
                future.add_callbacks(self._acknowledged, self._failed, callback_args=(idx,), errback_args=(idx,))
            except Exception as exc:  # noqa: BLE001 - kept as the statement's error
                self._failed(exc, idx)

    def _acknowledged(self, _rows: Any, idx: int) -> None:
        self._settle()

    def _failed(self, exc: BaseException, idx: int) -> None:
        self.errors[idx] = exc
        self._settle()

    def _settle(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._left -= 1
            if self._left == 0:
                self._done.set()
                return
        self._pump()

    def wait(self) -> list[BaseException | None]:
        """Each statement's error, once all are settled."""
        self._done.wait()
        return self.errors


class Paused(Exception):
    """A row not sent: the process was paused while its round was being written."""


class _Pending:
    """A round of rows being written."""

    def __init__(self, batches: list[list[tuple[Any, ...]]], sent: _Round) -> None:
        self.batches = batches
        self.sent = sent
        self.started = time.perf_counter()

    @property
    def count(self) -> int:
        """Rows in the round."""
        return sum(len(b) for b in self.batches)


class HistoryWriter:
    """Writes rows with bounded concurrency; returns when all are acknowledged."""

    def __init__(
        self,
        settings: Settings,
        retries: Retries | None = None,
        metrics: Metrics | None = None,
        pauses: PauseWatch | None = None,
    ) -> None:
        self.settings = settings
        self._pauses = pauses  # exactly-once: a round stops sending when the process was paused
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

    def _batches(self, rows: Sequence[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
        several_nodes = len(self.cluster.metadata.all_hosts()) > 1
        return plan_batches(
            rows,
            self.settings.history_batch_bytes,
            self.settings.history_batch_rows,
            self._primary_replica if several_nodes else one_group,
        )

    def _statement(self, batch: list[tuple[Any, ...]]) -> Any:
        if len(batch) == 1:
            return self._bound(batch[0])
        stmt = BatchStatement(BatchType.UNLOGGED)
        stmt.is_idempotent = True
        for row in batch:
            stmt.add(self._bound(row))
        return stmt

    def _write_once(self, statements: Sequence[tuple[Any, Any]]) -> None:
        results = execute_concurrent(self.session, statements, concurrency=self.concurrency, raise_on_first_error=True)
        for ok, result in results:  # raise_on_first_error raises already; belt and braces
            if not ok:
                raise result

    def start(self, rows: Sequence[HistoryRow]) -> _Pending:
        """Send the rows' writes (returns before they are acknowledged)."""
        batches = self._batches([msgspec.structs.astuple(r) for r in rows])
        halted = None
        pauses = self._pauses
        if pauses is not None:
            begun = pauses.now()

            def halted() -> bool:
                return pauses.paused_since(begun) is not None

        sent = _Round(self.session, [self._statement(b) for b in batches], self.concurrency, halted)
        return _Pending(batches, sent)

    def finish(self, pending: _Pending) -> None:
        """Return when every row of the round is acknowledged: the writes that failed are
        sent again under the retry policy, rows refused for what they hold one by one."""
        errors = pending.sent.wait()
        if any(isinstance(err, Paused) for err in errors):
            # exactly-once: this process may be a zombie now; the round's records are read
            # again by whoever owns their partitions (rows already written are rewritten)
            raise RoundAborted("the process was paused while writing history rows")
        failed = [b for b, err in zip(pending.batches, errors, strict=True) if err is not None]
        if failed:
            statements = [(self._statement(b), None) for b in failed]
            try:
                self._retry(lambda: self._write_once(statements))
            except InvalidRequest:
                self._write_isolated([row for b in failed for row in b])
        if self._metrics is not None and pending.count:
            self._metrics.add_written("history", pending.count, time.perf_counter() - pending.started)

    def write(self, rows: Sequence[HistoryRow]) -> None:
        """Write every row; returns when each is acknowledged."""
        if rows:
            self.finish(self.start(rows))

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
    """The history output: every outcome's row, sent when the round is handed over and
    awaited when the delivery flushes it (so the rows are acknowledged while the Kafka
    messages travel, and while the next batch is built)."""

    def __init__(self, writer: HistoryWriter) -> None:
        self.writer = writer
        self._rounds: collections.deque[_Pending] = collections.deque()

    def write(self, items: Sequence[Outcome]) -> None:
        """Send the round's rows."""
        self._rounds.append(self.writer.start([r.history for r in items]))

    def flush(self) -> list[Outcome]:
        """Wait for the oldest round's rows; nothing to re-route."""
        self.writer.finish(self._rounds.popleft())
        return []

    def discard(self) -> None:
        """Forget the rounds not flushed (rows are idempotent upserts: written again later)."""
        self._rounds.clear()

    def close(self) -> None:
        """The writer's session is closed with the worker's other clients."""
