"""The customers lookup on PostgreSQL: one psycopg_pool pool per worker, one parameterized
query per batch of distinct ids (`= ANY(%s)`; values are never part of the SQL text).

An id PostgreSQL can't take fails its own record, never its batch (docs/operations.md, "What happens
to bad records"): text can't hold a NUL character, so such an id is not asked about at
all, and when a batch query is refused for its data (a character the database's encoding
lacks, say) the batch is split in halves until the refused ids stand alone. A refused id
is answered "not found" (`customer_not_found`), which is the truth: no customer can have it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from flows import connections
from flows.adapters.postgres.errors import classify
from flows.retry import Kind, Retries
from flows.settings import Settings
from flows.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

CUSTOMERS_TABLE = "customers"
LOOKUP_SQL = sql.SQL("SELECT customer_id, name, segment, country, status FROM {} WHERE customer_id = ANY(%s)").format(
    sql.Identifier(CUSTOMERS_TABLE)
)
CustomerMember = dict[str, str]  # the `customer` member of an enriched event


def lock_schema(conn: psycopg.Connection[Any]) -> None:
    """Hold, until this transaction ends, the lock every change to the customers table's
    schema (its creation, the change triggers) takes: PostgreSQL's `IF NOT EXISTS` and `OR
    REPLACE` are not safe against each other (two at once: a duplicate-key error on
    pg_type, "tuple concurrently updated")."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('enrichment.customers.schema'))")


class PgCustomerLookup:
    """`flows.core.enrich.Lookup` for the customers table: the `customer` member by id."""

    def __init__(
        self,
        settings: Settings,
        retries: Retries | None = None,
        metrics: Metrics | None = None,
        name: str = "enrichment",
        lookup: str = "customers",
    ) -> None:
        self._retries = retries or Retries(settings.retry_deadline_seconds)
        self._metrics = metrics
        self._lookup = lookup
        self._timeout = settings.startup_timeout_seconds
        self.pool = ConnectionPool(
            settings.pg_dsn.get(),
            min_size=settings.pg_pool_min,
            max_size=settings.pg_pool_max,
            kwargs={
                "connect_timeout": max(1, int(settings.startup_timeout_seconds)),
                "application_name": name,
                **connections.pg_connect_kwargs(settings),
            },
            name=name,
            open=False,
            # a connection that died while the server was away is found out before use
            check=ConnectionPool.check_connection,
            reconnect_timeout=settings.retry_deadline_seconds,
        )
        self.pool.open(wait=False)

    def fetch(self, keys: Sequence[str]) -> dict[str, CustomerMember]:
        """The `customer` member of each id found."""
        started = time.perf_counter()
        askable = [c for c in keys if "\x00" not in c]
        found = self._fetch_isolated(askable) if askable else {}
        if self._metrics is not None:
            self._metrics.observe_lookup(self._lookup, time.perf_counter() - started)
        return found

    def _fetch_once(self, ids: Sequence[str]) -> dict[str, CustomerMember]:
        with self.pool.connection(timeout=self._timeout) as conn:
            rows = conn.execute(LOOKUP_SQL, (list(ids),)).fetchall()
        return {
            cid: {"name": name, "segment": segment, "country": country, "status": status}
            for cid, name, segment, country, status in rows
        }

    def _fetch_isolated(self, ids: Sequence[str]) -> dict[str, CustomerMember]:
        try:
            return self._retries.call("postgresql", lambda: self._fetch_once(ids), classify)
        except Exception as exc:
            if classify(exc) is not Kind.RECORD:
                raise
            if len(ids) == 1:
                if self._metrics is not None:
                    self._metrics.add_lookup_refused(self._lookup, 1)
                log.warning(
                    "PostgreSQL refused a customer_id; its record is customer_not_found",
                    extra={
                        "fields": {
                            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                        }
                    },
                )
                return {}
            half = len(ids) // 2
            return {**self._fetch_isolated(ids[:half]), **self._fetch_isolated(ids[half:])}

    def close(self) -> None:
        """Close the pool."""
        self.pool.close()
