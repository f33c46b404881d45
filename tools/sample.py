"""Sample data: seeded customers and a mix of good and bad events covering every failure
code. Shared by `make demo`, the tests and the benchmark."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

from flows.core.model import Customer

SEGMENTS = ("retail", "smb", "enterprise", "public")
COUNTRIES = ("DE", "FR", "NL", "PL", "US", "BR", "JP", "IN")
STATUSES = ("active", "active", "active", "suspended")
EVENT_TYPES = ("page_view", "add_to_cart", "checkout", "refund", "login")


def customer_id(i: int) -> str:
    return f"C{i:07d}"


def customers(n: int) -> Iterator[Customer]:
    for i in range(n):
        yield Customer(customer_id(i), f"Customer {i}", SEGMENTS[i % 4], COUNTRIES[i % 8], STATUSES[i % 4])


@dataclass(frozen=True)
class SampleRecord:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    expect: str  # "enriched" or the expected error.code


def good_event(rng: random.Random, i: int, cid: str, pad: int = 0) -> dict[str, object]:
    occurred = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i)
    payload: dict[str, object] = {
        "amount": round(rng.uniform(1, 500), 2),
        "currency": "EUR",
        "items": rng.randint(1, 9),
    }
    if pad:
        payload["note"] = "x" * pad
    return {
        "event_id": f"evt-{i:09d}",
        "event_type": EVENT_TYPES[i % 5],
        "occurred_at": occurred.isoformat().replace("+00:00", "Z"),
        "customer_id": cid,
        "payload": payload,
        "source": "sample",
        "schema_version": 1,
    }


def bad_record(i: int, kind: int, max_value_bytes: int) -> SampleRecord:
    """One bad record of each kind in turn; `i` keeps ids unique."""
    good = {
        "event_id": f"evt-{i:09d}",
        "event_type": "login",
        "occurred_at": "2026-01-01T00:00:00Z",
        "customer_id": customer_id(1),
    }
    key = f"bad-{i}".encode()
    cases: list[tuple[bytes | None, str]] = [
        (None, "empty_value"),
        (b"", "empty_value"),
        (b"x" * (max_value_bytes + 1), "payload_too_large"),
        (b"{not json", "invalid_json"),
        (b'{"event_id": "\xff\xfe"}', "invalid_json"),
        (json.dumps({k: v for k, v in good.items() if k != "customer_id"}).encode(), "schema_violation"),
        (json.dumps({**good, "occurred_at": "yesterday"}).encode(), "schema_violation"),
        (json.dumps({**good, "event_id": 42}).encode(), "schema_violation"),
        (json.dumps([good]).encode(), "schema_violation"),
        (json.dumps({**good, "customer_id": "' OR 1=1 --"}).encode(), "customer_not_found"),
        (json.dumps({**good, "customer_id": "NOPE-404"}).encode(), "customer_not_found"),
    ]
    value, expect = cases[kind % len(cases)]
    return SampleRecord(key, value, [("trace-id", f"t-{i}".encode())], expect)


BAD_KINDS = 11


def events(
    n: int,
    n_customers: int,
    bad_ratio: float = 0.01,
    seed: int = 7,
    zipf: float | None = 1.1,
    max_value_bytes: int = 1048576,
    pad: int = 0,
    large: bool = True,
) -> Iterator[SampleRecord]:
    """`n` records; customers Zipf-distributed (hit-heavy) or uniform when `zipf` is None.
    Every `1/bad_ratio`-th record is bad, cycling through every failure kind; `large=False`
    leaves out the over-the-limit record (it is big to produce)."""
    rng = random.Random(seed)  # noqa: S311 - sample data, not secrets
    every = int(1 / bad_ratio) if bad_ratio > 0 else 0
    cum = None
    if zipf is not None:
        cum = list(itertools.accumulate(1 / (k**zipf) for k in range(1, n_customers + 1)))
    ids = range(n_customers)
    bad_seen = 0
    chunk: list[int] = []
    for i in range(n):
        if every and i % every == every - 1:
            kind = bad_seen % BAD_KINDS
            bad_seen += 1
            if kind == 2 and not large:
                kind = 3
            yield bad_record(i, kind, max_value_bytes)
            continue
        if not chunk:
            chunk = (
                rng.choices(ids, cum_weights=cum, k=4096) if cum else [rng.randrange(n_customers) for _ in range(4096)]
            )
        cid = customer_id(chunk.pop())
        key = None if i % 3 == 0 else cid.encode()  # some without key: the output key defaults
        value = json.dumps(good_event(rng, i, cid, pad), separators=(",", ":")).encode()
        yield SampleRecord(key, value, [("trace-id", f"t-{i}".encode())], "enriched")
