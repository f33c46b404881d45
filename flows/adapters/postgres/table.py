"""The customers table: the start-up check of the lookup, and (for the demo, the tests and
the benchmark) its creation and seeding. Production manages the table itself."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from flows import connections
from flows.adapters.postgres.customers import CUSTOMERS_TABLE, LOOKUP_SQL, lock_schema
from flows.core.model import Customer
from flows.errors import PreflightError
from flows.settings import Settings, redact_dsn

CUSTOMERS_DDL = """CREATE TABLE IF NOT EXISTS customers (
    customer_id text PRIMARY KEY,
    name text NOT NULL,
    segment text NOT NULL,
    country text NOT NULL,
    status text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now())"""


def check_postgres(settings: Settings) -> None:
    """PostgreSQL answers, the customers table exists, and the lookup query itself runs
    (its columns and the SELECT privilege: a fault there shows now, not at a record)."""
    where = redact_dsn(settings.pg_dsn.get())
    try:
        with psycopg.connect(
            settings.pg_dsn.get(),
            connect_timeout=max(1, int(settings.startup_timeout_seconds)),
            **connections.pg_connect_kwargs(settings),
        ) as conn:
            conn.execute("SELECT 1")
            found = conn.execute("SELECT to_regclass(%s)", (CUSTOMERS_TABLE,)).fetchone()
            if found and found[0] is not None:
                try:
                    conn.execute(LOOKUP_SQL, ([],)).fetchall()
                except psycopg.DatabaseError as exc:
                    raise PreflightError(
                        f"PostgreSQL at {where}: the customer lookup fails: {_first_line(exc)}"
                    ) from None
    except PreflightError:
        raise
    except Exception as exc:
        raise PreflightError(f"PostgreSQL at {where}: can't connect: {_first_line(exc)}") from None
    if not found or found[0] is None:
        raise PreflightError(f"PostgreSQL table '{CUSTOMERS_TABLE}' does not exist in {where}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def seed_customers(settings: Settings, customers: Iterable[Customer]) -> int:
    """Create the customers table when missing and upsert `customers` into it."""
    rows = [(c.customer_id, c.name, c.segment, c.country, c.status) for c in customers]
    with psycopg.connect(settings.pg_dsn.get(), **connections.pg_connect_kwargs(settings)) as conn:
        lock_schema(conn)  # seeders at once (tests, a demo beside a benchmark) take turns
        conn.execute(CUSTOMERS_DDL)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO customers (customer_id, name, segment, country, status) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (customer_id) DO UPDATE SET name = EXCLUDED.name, segment = EXCLUDED.segment, "
                "country = EXCLUDED.country, status = EXCLUDED.status, updated_at = now()",
                rows,
            )
    return len(rows)
