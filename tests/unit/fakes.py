"""Small hand-written fakes behind the pipeline's protocols."""

from __future__ import annotations

from collections.abc import Sequence

from flows.core.model import Customer, SourceRecord
from flows.core.outcome import member_fragment


def member(customer: Customer) -> dict[str, str]:
    """The `customer` member an enriched event carries for this customer."""
    return {"name": customer.name, "segment": customer.segment, "country": customer.country, "status": customer.status}


class MemoryLookup:
    """`flows.core.enrich.Lookup` over a dict of customers; records every call so tests can
    count round trips."""

    def __init__(self, customers: dict[str, Customer]) -> None:
        self.customers = customers
        self.calls: list[list[str]] = []
        self.closed = False

    def fetch(self, keys: Sequence[str]) -> dict[str, object]:
        self.calls.append(list(keys))
        return {c: member(self.customers[c]) for c in keys if c in self.customers}

    def close(self) -> None:
        self.closed = True


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(
    value: bytes | None,
    key: bytes | None = b"k",
    offset: int = 0,
    partition: int = 0,
    headers: list[tuple[str, bytes | None]] | None = None,
    topic: str = "events",
) -> SourceRecord:
    return SourceRecord(topic, partition, offset, 1_700_000_000_000, key, value, headers or [])


GOOD = (
    b'{"event_id":"e1","event_type":"login","occurred_at":"2024-05-01T12:00:00+02:00",'
    b'"customer_id":"C1","payload":{"a":1},"extra":{"nested":[1,2]}}'
)
ALICE = Customer("C1", "Alice", "retail", "DE", "active")
ALICE_MEMBER = member_fragment("customer", member(ALICE))
