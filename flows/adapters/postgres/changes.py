"""Customer changes announced by PostgreSQL, so that cached customers are dropped as soon as
they change (CACHE_INVALIDATION=notify; docs/design.md, "Fresh reference data").

A trigger on `customers` sends the changed `customer_id` with `pg_notify` on the channel
`enrichment_customers` (an insert, an update, a delete; a TRUNCATE sends an empty payload,
"anything may have changed"). PostgreSQL delivers a notification only when its transaction
commits, in commit order, to every session listening at that moment. The trigger is
installed by `python -m ops migrate` (`install`), never by the dataflow itself.

`ChangeListener` holds one listening connection per process and passes each change to the
`Inbox` of every cache of the process (one per worker); a worker applies its inbox before
its next lookup. Notifications sent while no connection listens are lost, so every
(re)connection first clears every cache (`resets`): a lost connection can make the caches
cold, never stale.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from flows import connections
from flows.adapters.postgres.customers import CUSTOMERS_TABLE, lock_schema
from flows.core.cache import Inbox
from flows.errors import PreflightError
from flows.settings import Settings, redact_dsn

log = logging.getLogger(__name__)

DRAIN_MAX_S = 1.0  # drain(0) reads what is waiting for at most this long

CHANNEL = "enrichment_customers"
FUNCTION = "enrichment_customers_notify"
ROW_TRIGGER = "enrichment_customers_notify"
TRUNCATE_TRIGGER = "enrichment_customers_truncate"
# pg_notify refuses a payload of 8000 bytes or more, and with it the writer's transaction:
# an id that long announces "anything may have changed" instead
MAX_PAYLOAD = 7999

_FUNCTION_SQL = sql.SQL(
    """CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  ids text[] := '{{}}';
  id text;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    PERFORM pg_notify({channel}, '');
    RETURN NULL;
  END IF;
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    ids := ids || OLD.customer_id::text;
  END IF;
  IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.customer_id IS DISTINCT FROM OLD.customer_id) THEN
    ids := ids || NEW.customer_id::text;
  END IF;
  FOREACH id IN ARRAY ids LOOP
    IF id IS NULL OR octet_length(id) > {max_payload} THEN
      PERFORM pg_notify({channel}, '');
    ELSE
      PERFORM pg_notify({channel}, id);
    END IF;
  END LOOP;
  RETURN NULL;
END $$"""
)


def _install_statements() -> list[sql.Composed]:
    table = sql.Identifier(CUSTOMERS_TABLE)
    function = sql.Identifier(FUNCTION)
    return [
        _FUNCTION_SQL.format(function=function, channel=sql.Literal(CHANNEL), max_payload=sql.Literal(MAX_PAYLOAD)),
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(ROW_TRIGGER), table),
        sql.SQL("CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
            sql.Identifier(ROW_TRIGGER), table, function
        ),
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(TRUNCATE_TRIGGER), table),
        sql.SQL("CREATE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(
            sql.Identifier(TRUNCATE_TRIGGER), table, function
        ),
    ]


def _connect(settings: Settings, autocommit: bool = True) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        settings.pg_dsn.get(),
        autocommit=autocommit,
        connect_timeout=max(1, int(settings.startup_timeout_seconds)),
        application_name="enrichment-changes",
        # a dead network is found within about 25 s, not at the next write
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
        **connections.pg_connect_kwargs(settings),
    )


def install(settings: Settings) -> None:
    """Create (or replace) the function and the triggers, in one transaction: idempotent."""
    with _connect(settings, autocommit=False) as conn, conn.transaction():
        lock_schema(conn)
        for statement in _install_statements():
            conn.execute(statement)


def uninstall(settings: Settings) -> None:
    """Drop the triggers and the function (CACHE_INVALIDATION=ttl needs neither)."""
    table = sql.Identifier(CUSTOMERS_TABLE)
    with _connect(settings, autocommit=False) as conn, conn.transaction():
        lock_schema(conn)
        for trigger in (ROW_TRIGGER, TRUNCATE_TRIGGER):
            conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), table))
        conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(FUNCTION)))


def installed_triggers(settings: Settings) -> set[str]:
    """The change triggers `customers` has."""
    with _connect(settings) as conn:
        rows = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal",
            (CUSTOMERS_TABLE,),
        ).fetchall()
    return {str(r[0]) for r in rows} & {ROW_TRIGGER, TRUNCATE_TRIGGER}


def check_installed(settings: Settings) -> None:
    """CACHE_INVALIDATION=notify needs the triggers: PreflightError naming the command."""
    try:
        found = installed_triggers(settings)
    except psycopg.Error as exc:
        raise PreflightError(
            f"PostgreSQL at {redact_dsn(settings.pg_dsn.get())}: can't read its triggers: {exc}"
        ) from None
    missing = sorted({ROW_TRIGGER, TRUNCATE_TRIGGER} - found)
    if missing:
        raise PreflightError(
            f"CACHE_INVALIDATION=notify: table '{CUSTOMERS_TABLE}' has no change trigger ({', '.join(missing)} "
            "missing); install it once with `python -m ops migrate install`"
        )


class ChangeListener:
    """One LISTEN connection for the process; each change reaches every subscribed inbox.

    `drain(timeout)` reads what has arrived (waiting up to `timeout` for the first); the
    dataflow calls it in a loop on a thread of its own (`start`), the Lambda before each
    batch. A connection lost (PostgreSQL restarted, the network) is opened again by the next
    call, and then every inbox is told to clear its cache."""

    def __init__(
        self,
        settings: Settings,
        on_reset: Callable[[], None] | None = None,
        on_changes: Callable[[int], None] | None = None,
    ) -> None:
        self._settings = settings
        self._inboxes: list[Inbox] = []
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._on_reset = on_reset
        self._on_changes = on_changes
        self._connected_once = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, inbox: Inbox) -> None:
        """Send the changes to `inbox` from now on."""
        with self._lock:
            self._inboxes = [*self._inboxes, inbox]

    def _post(self, keys: list[str] | None) -> None:
        for inbox in self._inboxes:
            inbox.post(keys)

    def _open(self) -> psycopg.Connection[tuple[object, ...]]:
        conn = _connect(self._settings)
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        # nothing said while no one listened can be known: every cache starts over
        self._post(None)
        if self._connected_once:
            if self._on_reset is not None:
                self._on_reset()
            log.warning("customer changes: listening again, every worker's cache cleared")
        self._connected_once = True
        return conn

    def drain(self, timeout: float = 0.0) -> int:
        """Pass on the changes that arrive within `timeout` (at least those already there),
        each as soon as it arrives; how many. Raises psycopg's error when PostgreSQL can't
        be reached (the caller tries again)."""
        if self._conn is None or self._conn.closed:
            self._conn = self._open()
        n = 0
        # psycopg reads once when the timeout is over (a few hundred notifications a read):
        # read again while more is waiting, so a bulk change is heard whole (bounded)
        until = time.monotonic() + max(timeout, DRAIN_MAX_S)
        try:
            while True:
                got = 0
                for note in self._conn.notifies(timeout=timeout):
                    self._post([note.payload] if note.payload else None)
                    got += 1
                    if self._on_changes is not None:
                        self._on_changes(1)
                n += got
                if got == 0 or timeout > 0 or time.monotonic() >= until:
                    return n
        except psycopg.Error:
            self._drop()
            raise

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def start(self) -> None:
        """Listen on a daemon thread until `close` (once: later calls do nothing)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="customer-changes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self.drain(timeout=0.5)
                delay = 0.5
            except (psycopg.Error, OSError) as exc:
                log.warning(
                    "customer changes: not listening, trying again",
                    extra={"fields": {"retry_in_s": delay, "error": f"{type(exc).__name__}: {exc}"[:300]}},
                )
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def close(self) -> None:
        """Stop listening."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._drop()
