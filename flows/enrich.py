"""Enrichment: a TTL cache in front of a batched customer lookup.

The cache lives per worker (see README, "Design: the customer cache"): each worker keeps a
bounded LRU of encoded customer fragments, including "not found" answers with a shorter
TTL. Misses of one batch are looked up together, one query per chunk of distinct ids.
Nothing here imports a database driver; `flows.pg` adapts PostgreSQL to `CustomerLookup`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from flows import route
from flows.model import Customer, Decoded, Failure, Routed
from flows.stats import STATS

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class CustomerLookup(Protocol):
    """Reads customers by id; one call is one round trip for all the ids given."""

    def fetch(self, customer_ids: Sequence[str]) -> dict[str, Customer]: ...

    def close(self) -> None: ...


class CustomerCache:
    """LRU with a TTL per entry; `None` values remember "not found" for `negative_ttl`."""

    def __init__(self, ttl: float, negative_ttl: float, max_size: int, clock: Clock = time.monotonic) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_size = max_size
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, customer_id: str) -> tuple[bool, bytes | None]:
        """(found in cache, fragment or None for a remembered miss)."""
        entry = self._entries.get(customer_id)
        if entry is None:
            return False, None
        if entry[0] <= self._clock():
            del self._entries[customer_id]
            return False, None
        self._entries.move_to_end(customer_id)
        return True, entry[1]

    def put(self, customer_id: str, fragment: bytes | None) -> None:
        ttl = self.ttl if fragment is not None else self.negative_ttl
        if ttl <= 0 or self.max_size <= 0:
            return
        self._entries[customer_id] = (self._clock() + ttl, fragment)
        self._entries.move_to_end(customer_id)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Enricher:
    """Turns a batch of decoded records and failures into routed results."""

    def __init__(
        self,
        lookup: CustomerLookup,
        cache: CustomerCache,
        output_topic: str,
        failure_topic: str,
        lookup_batch_size: int = 1000,
        wallclock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.lookup = lookup
        self.cache = cache
        self.output_topic = output_topic
        self.failure_topic = failure_topic
        self.lookup_batch_size = lookup_batch_size
        self._now = wallclock

    def _resolve(self, items: Sequence[Decoded | Failure]) -> dict[str, bytes | None | Exception]:
        """Fragment (or None) for each customer of the batch: cache first, then one query
        per chunk of the distinct missing ids."""
        resolved: dict[str, bytes | None | Exception] = {}
        missing: dict[str, None] = {}
        hits = misses = 0
        for item in items:
            if type(item) is not Decoded:
                continue
            cid = item.event.customer_id
            if cid in resolved:
                hits += 1
                continue
            if cid in missing:
                misses += 1
                continue
            found, fragment = self.cache.lookup(cid)
            if found:
                resolved[cid] = fragment
                hits += 1
            else:
                missing[cid] = None
                misses += 1
        queries = 0
        for chunk in _chunks(list(missing), self.lookup_batch_size):
            customers = self.lookup.fetch(chunk)
            queries += 1
            for cid in chunk:
                customer = customers.get(cid)
                try:
                    fragment = route.customer_fragment(customer) if customer is not None else None
                except Exception as exc:  # noqa: BLE001 - fails only this customer's records
                    resolved[cid] = exc
                    continue
                self.cache.put(cid, fragment)
                resolved[cid] = fragment
        STATS.add_lookups(hits, misses, queries)
        return resolved

    def process(self, items: Sequence[Decoded | Failure]) -> list[Routed]:
        resolved = self._resolve(items)
        now = self._now()
        enriched_at = route.rfc3339(now)
        out: list[Routed] = []
        for item in items:
            try:
                if type(item) is Decoded:
                    fragment = resolved[item.event.customer_id]
                    if isinstance(fragment, Exception):
                        raise fragment
                    if fragment is None:
                        result = route.failure(route.not_found(item), self.failure_topic, now)
                    else:
                        result = route.success(item, fragment, self.output_topic, now, enriched_at)
                else:
                    assert isinstance(item, Failure)
                    result = route.failure(item, self.failure_topic, now)
            except Exception as exc:  # noqa: BLE001 - the net under a bug, per record
                log.exception("internal error on %s", item.record.coordinates)
                decoded = item if isinstance(item, Decoded) else None
                result = route.failure(route.internal_error(item.record, exc, decoded), self.failure_topic, now)
            out.append(result)
        STATS.add_results(out)
        return out
