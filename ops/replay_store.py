"""Where `ops replay` keeps its state: a table in the pipeline's history keyspace, so every
operator's run, from any directory or machine, sees the same record of what was replayed.

`replay_state` has one row per (Kafka cluster id, failure topic, target topic) holding the
document of `ops.replay_state` and a lease: `owner` (host:pid:run), `owner_since`,
`lease_until`. Only one run at a time may write a row, the one holding its lease:

- Taking it: read the row (SERIAL, so the latest lightweight transaction is seen); when
  someone holds it, refuse (exit status 2, naming the holder). Otherwise `INSERT ... IF
  NOT EXISTS` for a new row, `UPDATE ... IF owner = <the owner read>` (null) for an
  existing one, and read the row again: what it holds now is what this run starts from.
- Keeping it: the lease columns are written `USING TTL` (60 s) and renewed every 15 s
  from a background thread (`UPDATE ... IF owner = <me>`). Expiry is the database's: a
  run that dies simply stops renewing, and its columns vanish 60 s after the last renewal
  by the database's clock, so no operator's clock is compared with another's. (CQL
  conditions can't say `owner = null OR lease_until < now`: there is no OR, and it would
  need the clocks to agree.) `lease_until` is kept for the refusal message only.
- Every state write is `UPDATE ... SET state = ? IF owner = <me>`: a run that lost its
  lease (paused, cut off from the database) can never overwrite the state, and stops.
- A chunk is begun only when the lease has at least half its time left (by the machine's
  boot clock, which counts time asleep), so it is produced while the lease holds.

A run that dies with a chunk in flight leaves it pending; the next holder settles it by
reading the target topic (`ops.replay`). Its records must have stopped arriving by then:
the replay's producer gives up on a record 15 s after producing it (plus up to 30 s for a
request already sent), and the next run waits until the pending write is `IN_FLIGHT_S`
old, measured by the database's clock (`writetime(state)` of a lightweight transaction is
the database's time, and so is `toTimestamp(now())`).

The keyspace must exist (the dataflow creates it): a run pointed at a mistyped
SCYLLA_KEYSPACE must not start from an empty state of its own. The table is created when
missing, in CQL that ScyllaDB and Cassandra 5 both accept.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from cassandra import ConsistencyLevel, OperationTimedOut, ReadTimeout, Unavailable, WriteTimeout
from cassandra.cluster import NoHostAvailable
from cassandra.query import PreparedStatement

from flows.settings import Settings
from ops.cql import open_session
from ops.errors import FAILED, USAGE, OpsError
from ops.ranges import format_ms

TABLE = "replay_state"
LEASE_S = 60
RENEW_EVERY_S = 15.0
MIN_LEFT_S = LEASE_S / 2  # a chunk is begun only with this much of the lease left
DELIVERY_TIMEOUT_S = 15.0  # the replay's producer gives up on a record after this long
IN_FLIGHT_S = 60.0  # after this long, nothing of a chunk begun can still reach the target
CAS_DEADLINE_S = 20.0

CREATE_TABLE = f"""CREATE TABLE IF NOT EXISTS {{ks}}.{TABLE} (
    cluster_id text, failure_topic text, target_topic text,
    state text,
    owner text, owner_since timestamp, lease_until timestamp,
    PRIMARY KEY ((cluster_id, failure_topic, target_topic)))"""

# the outcome of a request that ended so is unknown: a serial read tells it
UNCERTAIN = (WriteTimeout, ReadTimeout, Unavailable, OperationTimedOut, NoHostAvailable)

_clock: Callable[[], float] = (
    (lambda: time.clock_gettime(time.CLOCK_BOOTTIME)) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic
)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ms(moment: dt.datetime | None) -> str:
    if moment is None:
        return "?"
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)  # the driver's are UTC
    return format_ms(int(aware.timestamp() * 1000))


@dataclass(frozen=True)
class StateKey:
    """The key of a `replay_state` row: Kafka cluster id, failure topic, target topic."""

    cluster: str
    failure_topic: str
    target_topic: str

    def params(self) -> tuple[str, str, str]:
        """The key as bound parameters, in the order of the table's primary key."""
        return (self.cluster, self.failure_topic, self.target_topic)

    def __str__(self) -> str:
        return f"{self.failure_topic} -> {self.target_topic} (cluster {self.cluster})"


@dataclass(frozen=True)
class Holder:
    """Who holds a row's lease (`owner` is host:pid:run), since when and until when."""

    owner: str
    since: dt.datetime | None
    until: dt.datetime | None

    def describe(self) -> str:
        """The holder for an error message: host, pid, since when, and until when unless renewed."""
        host, pid, _run = (self.owner.rsplit(":", 2) + ["?", "?"])[:3]
        return f"host {host}, pid {pid}, since {_ms(self.since)} (lease until {_ms(self.until)} unless renewed)"


@dataclass(frozen=True)
class Row:
    """A `replay_state` row as read: whether it exists, the state document, the lease holder, and
    when the state was last written (the database's time)."""

    exists: bool
    state: str | None = None
    holder: Holder | None = None
    state_written_ms: int | None = None  # the database's time of the last state write


def _owned_by(owner: str) -> Callable[[Row], bool]:
    return lambda row: row.holder is not None and row.holder.owner == owner


class Store:
    """The `replay_state` table: reads, conditional writes, and leases on its rows."""

    def __init__(self, settings: Settings) -> None:
        ks = settings.scylla_keyspace  # validated as a CQL identifier by Settings
        self.table = f"{ks}.{TABLE}"
        self.cluster, self.session = open_session(settings)
        try:
            if ks not in self.cluster.metadata.keyspaces:
                hosts = ",".join(settings.scylla_hosts)
                raise OpsError(
                    f"keyspace {ks} does not exist on {hosts}: replay keeps its state in the pipeline's "
                    "history keyspace (SCYLLA_KEYSPACE, created by the dataflow's first run) so that "
                    "every operator's run shares it; is SCYLLA_KEYSPACE the dataflow's?",
                    USAGE,
                )
            if TABLE not in self.cluster.metadata.keyspaces[ks].tables:
                self.session.execute(CREATE_TABLE.format(ks=ks), timeout=60)
            self._prepare(ConsistencyLevel.LOCAL_SERIAL if settings.scylla_local_dc else ConsistencyLevel.SERIAL)
        except OpsError:
            self.cluster.shutdown()
            raise
        except Exception as exc:
            self.cluster.shutdown()
            raise OpsError(f"replay state table {self.table}: {type(exc).__name__}: {str(exc)[:300]}", USAGE) from None

    def _prepare(self, serial: int) -> None:
        t, key = self.table, "cluster_id = ? AND failure_topic = ? AND target_topic = ?"
        lease = f"USING TTL {LEASE_S}"

        def lwt(cql: str) -> PreparedStatement:
            stmt = self.session.prepare(cql)
            stmt.serial_consistency_level = serial
            return stmt

        # identifiers only (the keyspace is validated by Settings); values are bound
        select = "SELECT state, owner, owner_since, lease_until, writetime(state) FROM"
        self.read_stmt = self.session.prepare(f"{select} {t} WHERE {key}")
        self.read_stmt.consistency_level = serial
        cols = "cluster_id, failure_topic, target_topic, owner, owner_since, lease_until"
        self.insert_stmt = lwt(f"INSERT INTO {t} ({cols}) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS {lease}")  # noqa: S608
        held = "owner = ?, owner_since = ?, lease_until = ?"
        self.lease_stmt = lwt(f"UPDATE {t} {lease} SET {held} WHERE {key} IF owner = ?")  # noqa: S608
        self.write_stmt = lwt(f"UPDATE {t} SET state = ? WHERE {key} IF owner = ?")  # noqa: S608
        self.release_stmt = lwt(f"DELETE owner, owner_since, lease_until FROM {t} WHERE {key} IF owner = ?")
        self.now_stmt = self.session.prepare("SELECT toTimestamp(now()) FROM system.local")

    def read(self, key: StateKey) -> Row:
        """The row of `key` (`exists` False when there is none), read at serial consistency so the
        latest lightweight transaction is seen."""
        found = list(self.session.execute(self.read_stmt, key.params(), timeout=10))
        if not found:
            return Row(False)
        state, owner, since, until, written_us = found[0]
        holder = Holder(owner, since, until) if owner else None
        return Row(True, state, holder, None if written_us is None else written_us // 1000)

    def server_now_ms(self) -> int:
        """The database's current time in epoch ms, to compare with `writetime(state)` without
        involving any local clock."""
        (now,) = self.session.execute(self.now_stmt, timeout=10).one()
        aware = now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)
        return int(aware.timestamp() * 1000)

    def cas(
        self,
        key: StateKey,
        stmt: PreparedStatement,
        params: tuple[Any, ...],
        done: Callable[[Row], bool],
        status: int,
        deadline_s: float = CAS_DEADLINE_S,
    ) -> bool:
        """Run a lightweight transaction; whether it applied. When the answer is lost (a
        timeout), a serial read settles the round and `done` tells whether the write is
        in; if not, the statement is tried again (its condition is checked again)."""
        give_up = _clock() + deadline_s
        while True:
            try:
                return bool(self.session.execute(stmt, params, timeout=10).was_applied)
            except UNCERTAIN as exc:
                last: Exception = exc
            while True:
                if _clock() > give_up:
                    raise OpsError(
                        f"replay state {self.table}: no answer within {deadline_s:.0f}s "
                        f"({type(last).__name__}: {str(last)[:200]})",
                        status,
                    )
                time.sleep(0.5)
                try:
                    row = self.read(key)
                    break
                except UNCERTAIN as exc:
                    last = exc
            if done(row):
                return True

    def take(self, key: StateKey) -> Lease:
        """The lease on `key`'s row, or OpsError (status 2) naming who holds it."""
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        for _ in range(3):
            try:
                row = self.read(key)
            except UNCERTAIN as exc:
                raise OpsError(f"replay state {self.table}: {type(exc).__name__}: {str(exc)[:200]}", USAGE) from None
            if row.holder is not None:
                raise OpsError(
                    f"another replay holds the state of {key}: {row.holder.describe()}; if that run "
                    f"is gone, its lease lapses within {LEASE_S}s",
                    USAGE,
                )
            since = _utcnow()
            sent = _clock()
            until = since + dt.timedelta(seconds=LEASE_S)
            if row.exists:
                params: tuple[Any, ...] = (owner, since, until, *key.params(), None)
                applied = self.cas(key, self.lease_stmt, params, _owned_by(owner), USAGE)
            else:
                applied = self.cas(key, self.insert_stmt, (*key.params(), owner, since, until), _owned_by(owner), USAGE)
            if applied:
                lease = Lease(self, key, owner, since, sent, Row(True))
                try:
                    lease.row = self.read(key)  # what this run starts from: the latest state
                except Exception:
                    lease.release()
                    raise
                return lease
        raise OpsError(
            f"the lease on the replay state of {key} changed hands while this run tried to take it; run again", USAGE
        )

    def close(self) -> None:
        """Shut down the connection to the cluster."""
        self.cluster.shutdown()


class Lease:
    """This run's hold on one row: renewed in the background, checked before each chunk,
    and the condition of every state write. Use as a context manager (renewal starts on
    entry; the lease is given back on exit)."""

    def __init__(
        self, store: Store, key: StateKey, owner: str, since: dt.datetime, confirmed_at: float, row: Row
    ) -> None:
        self.store, self.key, self.owner, self.since = store, key, owner, since
        self.row = row  # as it was right after the lease was taken
        self.lost: str | None = None
        self._valid_until = confirmed_at + LEASE_S
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name="replay-lease", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def left(self) -> float:
        """Seconds of the lease left by this machine's boot clock; negative once it has lapsed."""
        with self._lock:
            return self._valid_until - _clock()

    def renew(self) -> bool:
        """Extend the lease to `LEASE_S` from now; False when the answer is unknown or the lease is
        lost (then `lost` says why)."""
        sent = _clock()
        until = _utcnow() + dt.timedelta(seconds=LEASE_S)
        params = (self.owner, self.since, until, *self.key.params(), self.owner)
        try:
            applied = self.store.cas(
                self.key, self.store.lease_stmt, params, _owned_by(self.owner), FAILED, deadline_s=RENEW_EVERY_S
            )
        except Exception:  # noqa: BLE001 - unknown for now: the next attempt, or the chunk check, decides
            return False
        if not applied:
            self._lose()
            return False
        with self._lock:
            self._valid_until = max(self._valid_until, sent + LEASE_S)
        return True

    def _lose(self) -> None:
        try:
            holder = self.store.read(self.key).holder
        except Exception:  # noqa: BLE001 - only for the message
            holder = None
        self.lost = f"held now by {holder.describe()}" if holder is not None else "it expired"

    def _renew_loop(self) -> None:
        wait = RENEW_EVERY_S
        while not self._stop.wait(wait) and self.lost is None:
            wait = RENEW_EVERY_S if self.renew() else 2.0

    def ensure(self) -> None:
        """Before a chunk: the lease is still ours, with at least half its time left."""
        if self.lost is None and self.left() < MIN_LEFT_S:
            self.renew()
        if self.lost is not None:
            raise OpsError(
                f"this run lost its lease on the replay state of {self.key} ({self.lost}); stopped "
                "before the next chunk: run again",
                FAILED,
            )
        left = self.left()
        if left < MIN_LEFT_S:
            raise OpsError(
                f"could not renew the lease on the replay state in {self.store.table} ({left:.0f}s "
                f"left, a chunk needs {MIN_LEFT_S:.0f}s); stopped before the next chunk: run again",
                FAILED,
            )

    def write(self, doc: str) -> None:
        """Store the state document, only while this run holds the lease."""
        params = (doc, *self.key.params(), self.owner)

        def landed(row: Row) -> bool:
            return _owned_by(self.owner)(row) and row.state == doc

        if not self.store.cas(self.key, self.store.write_stmt, params, landed, FAILED):
            self._lose()
            raise OpsError(
                f"the replay state of {self.key} was not written: this run no longer holds its lease "
                f"({self.lost}); run again (the next run settles the chunk in flight)",
                FAILED,
            )

    def release(self) -> None:
        """Give the lease back (best effort: if this fails, it expires by itself)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=CAS_DEADLINE_S)
        if self.lost is not None:
            return
        with contextlib.suppress(Exception):  # if this fails, the lease expires by itself
            self.store.cas(
                self.key,
                self.store.release_stmt,
                (*self.key.params(), self.owner),
                lambda row: not _owned_by(self.owner)(row),
                FAILED,
                deadline_s=5.0,
            )
