"""Parked records: dead letters of `customer_not_found` wait in the failure topic until their
customer exists, then go back to the input, once each (`ops replay --if-customer-exists`,
and with `--follow` by themselves as customers arrive; docs/ops-tools.md).

It runs beside the dataflow, not in it: the failure topic is the parking lot already, the
replay state in ScyllaDB already makes each dead letter go back once (whatever the runs,
crashes and operators), the replayed record takes the one processing path every record
takes, and the dataflow's hot path carries no index of parked ids.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import msgspec
import psycopg

from flows.adapters.postgres.changes import ChangeListener
from flows.adapters.postgres.customers import PgCustomerLookup
from flows.core.decode import Unreadable
from flows.errors import DependencyUnavailable
from flows.settings import Settings, redact_dsn
from ops.errors import USAGE, OpsError

T = TypeVar("T")
_ID_ONLY = msgspec.json.Decoder(dict[str, object])


def customer_id(value: bytes | None, read: Callable[[bytes], bytes] | None = None) -> str | None:
    """The `customer_id` of a dead letter's value, when it is a JSON object that has one
    (`read`: INPUT_FORMAT's reader, which turns a Schema Registry format's value into JSON)."""
    if not value:
        return None
    try:
        doc = _ID_ONLY.decode(read(value) if read is not None else value)
    except (Unreadable, msgspec.DecodeError, ValueError):
        return None
    found = doc.get("customer_id")
    return found if isinstance(found, str) and "\x00" not in found else None


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last one shorter)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextlib.contextmanager
def customers(settings: Settings) -> Iterator[PgCustomerLookup]:
    """The dataflow's own customer lookup (its query, its refusal of ids PostgreSQL can't
    take), for `--if-customer-exists`; PostgreSQL away past STARTUP_TIMEOUT_SECONDS is an
    OpsError (status 2), as for any dependency at start."""
    lookup = PgCustomerLookup(
        dataclasses.replace(settings, retry_deadline_seconds=settings.startup_timeout_seconds),
        name="enrichment-ops-replay",
    )
    try:
        yield lookup
    except DependencyUnavailable as exc:
        raise OpsError(f"PostgreSQL at {redact_dsn(settings.pg_dsn.get())}: {exc}", USAGE) from None
    finally:
        lookup.close()


class Wakeups:
    """Customer changes announced by PostgreSQL (the dataflow's change trigger), as a signal
    to look again; without the trigger, only the interval does."""

    def __init__(self, settings: Settings) -> None:
        self.changed = threading.Event()
        self._listener = ChangeListener(settings, on_changes=lambda n: self.changed.set())

    def wait(self, seconds: float, stop: threading.Event | None = None) -> None:
        """Until a change is announced or `seconds` pass (or `stop` is set)."""
        waited = 0.0
        while waited < seconds and not self.changed.is_set() and not (stop and stop.is_set()):
            step = min(0.5, seconds - waited)
            try:
                self._listener.drain(timeout=step)
            except psycopg.Error:
                # PostgreSQL away: the interval still brings the next look
                if stop is not None:
                    stop.wait(step)
            waited += step
        self.changed.clear()

    def close(self) -> None:
        """Stop listening."""
        self._listener.close()
