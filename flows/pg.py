"""PostgreSQL adapter for `CustomerLookup`: one psycopg_pool pool per worker.

The query is a constant with one parameter (`= ANY(%s)` over a list of ids); values are
never part of the SQL text. Connection and query failures that may pass are retried in
`flows.retry`; the pool replaces broken connections by itself.

An id PostgreSQL can't take fails its own record, never its batch (README, "What happens
to bad records"): text can't hold a NUL character, so such an id is not asked about at
all, and when a batch query is refused for its data (`psycopg.DataError`, SQLSTATE class
22: a character the database's encoding lacks, say) the batch is split in halves until the
refused ids stand alone. A refused id is answered "not found" (`customer_not_found`),
which is the truth: no customer can have it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from psycopg import DataError, sql
from psycopg_pool import ConnectionPool

from flows.model import Customer
from flows.retry import Backoff, retry
from flows.settings import Settings
from flows.stats import STATS

log = logging.getLogger(__name__)

CUSTOMERS_TABLE = "customers"
LOOKUP_SQL = sql.SQL(
    "SELECT customer_id, name, segment, country, status FROM {} WHERE customer_id = ANY(%s)"
).format(sql.Identifier(CUSTOMERS_TABLE))


class PgCustomerLookup:
    def __init__(self, settings: Settings, name: str = "enrichment") -> None:
        self._backoff = Backoff(settings.retry_deadline_seconds)
        self._timeout = settings.startup_timeout_seconds
        self.pool = ConnectionPool(
            settings.pg_dsn.get(),
            min_size=settings.pg_pool_min,
            max_size=settings.pg_pool_max,
            kwargs={"connect_timeout": max(1, int(settings.startup_timeout_seconds)),
                    "application_name": name, **settings.pg_connect_kwargs()},
            name=name,
            open=False,
            # a connection that died while the server was away is found out before use
            check=ConnectionPool.check_connection,
            reconnect_timeout=settings.retry_deadline_seconds,
        )
        self.pool.open(wait=False)

    def _fetch_once(self, customer_ids: Sequence[str]) -> dict[str, Customer]:
        with self.pool.connection(timeout=self._timeout) as conn:
            rows = conn.execute(LOOKUP_SQL, (list(customer_ids),)).fetchall()
        return {row[0]: Customer(*row) for row in rows}

    def fetch(self, customer_ids: Sequence[str]) -> dict[str, Customer]:
        started = time.perf_counter()
        askable = [c for c in customer_ids if "\x00" not in c]
        found = self._fetch_isolated(askable) if askable else {}
        STATS.observe_lookup(time.perf_counter() - started)
        return found

    def _fetch_isolated(self, customer_ids: Sequence[str]) -> dict[str, Customer]:
        try:
            return retry("postgresql", lambda: self._fetch_once(customer_ids), self._backoff)
        except (DataError, UnicodeEncodeError) as exc:
            if len(customer_ids) == 1:
                STATS.add_lookup_refused(1)
                log.warning("PostgreSQL refused a customer_id; its record is customer_not_found", extra={"fields": {
                    "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}})
                return {}
            half = len(customer_ids) // 2
            return {**self._fetch_isolated(customer_ids[:half]), **self._fetch_isolated(customer_ids[half:])}

    def close(self) -> None:
        self.pool.close()
