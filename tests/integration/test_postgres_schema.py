"""The customers table and its change triggers made by several clients at once (tests on
several workers, a demo beside a benchmark, `ops migrate install` run by two operators):
PostgreSQL's `IF NOT EXISTS` / `OR REPLACE` race each other on an empty database (a
duplicate key on pg_type, "tuple concurrently updated"); each of them takes a lock first."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg

from flows.adapters.postgres import changes
from flows.settings import Settings
from tools import provision, sample

CLIENTS = 6


def at_once(work: Callable[[int], None]) -> list[BaseException]:
    """Run `work(i)` on CLIENTS threads released together; the errors they raised."""
    errors: list[BaseException] = []
    gate = threading.Barrier(CLIENTS)

    def run(i: int) -> None:
        gate.wait()
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


def test_seeding_and_installing_at_once_on_an_empty_database(empty_database: Settings) -> None:
    settings = empty_database
    customers = list(sample.customers(200))
    # overlapping rows, each client in its own order
    errors = at_once(lambda i: provision.seed_customers(settings, customers[i * 10 :] + customers[: i * 10]))
    assert errors == []
    errors = at_once(lambda i: changes.install(settings) if i % 2 else changes.uninstall(settings))
    assert errors == []
    changes.install(settings)
    assert changes.installed_triggers(settings) == {changes.ROW_TRIGGER, changes.TRUNCATE_TRIGGER}
    with psycopg.connect(settings.pg_dsn.get()) as conn:
        row = conn.execute("SELECT count(*) FROM customers").fetchone()
    assert row is not None and row[0] == 200
