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
from flows.failurelog import FailureLog
from flows.model import Customer, Decoded, Failure, Routed
from flows.sizes import TopicLimits, record_size
from flows.stats import STATS

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class CustomerLookup(Protocol):
    """Reads customers by id; one call is one round trip for all the ids given."""

    def fetch(self, customer_ids: Sequence[str]) -> dict[str, Customer]: ...

    def close(self) -> None: ...


class _Lru:
    """Entries with an expiry time, least recently used dropped beyond `max_size`."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.entries: OrderedDict[str, tuple[float, bytes | None]] = OrderedDict()

    def put(self, key: str, expires: float, fragment: bytes | None) -> None:
        self.entries[key] = (expires, fragment)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_size:
            self.entries.popitem(last=False)


class CustomerCache:
    """Customers found (for `ttl`, at most `max_size`) and ids not found (for
    `negative_ttl`, at most `negative_max_size`), in two LRUs: a stream of unknown ids
    evicts only other unknown ids, never the customers that are hit."""

    def __init__(self, ttl: float, negative_ttl: float, max_size: int, negative_max_size: int | None = None,
                 clock: Clock = time.monotonic) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._clock = clock
        self._found = _Lru(max_size)
        self._missing = _Lru(max_size if negative_max_size is None else negative_max_size)

    def __len__(self) -> int:
        return len(self._found.entries) + len(self._missing.entries)

    def lookup(self, customer_id: str) -> tuple[bool, bytes | None]:
        """(found in cache, fragment or None for a remembered miss)."""
        entries = self._found.entries  # the hot path: plain dict operations, no calls
        entry = entries.get(customer_id)
        if entry is None:
            entries = self._missing.entries
            entry = entries.get(customer_id)
            if entry is None:
                return False, None
        if entry[0] <= self._clock():
            del entries[customer_id]
            return False, None
        entries.move_to_end(customer_id)
        return True, entry[1]

    def put(self, customer_id: str, fragment: bytes | None) -> None:
        if fragment is None:
            if self.negative_ttl > 0 and self._missing.max_size > 0:
                self._found.entries.pop(customer_id, None)
                self._missing.put(customer_id, self._clock() + self.negative_ttl, None)
        elif self.ttl > 0 and self._found.max_size > 0:
            self._missing.entries.pop(customer_id, None)
            self._found.put(customer_id, self._clock() + self.ttl, fragment)


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
        limits: TopicLimits | None = None,
        failures: FailureLog | None = None,
    ) -> None:
        self.lookup = lookup
        self.cache = cache
        self.output_topic = output_topic
        self.failure_topic = failure_topic
        self.lookup_batch_size = lookup_batch_size
        self._now = wallclock
        self.limits = limits
        self.failures = failures

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
                    result = self._enrich(item, resolved[item.event.customer_id], now, enriched_at)
                else:
                    assert isinstance(item, Failure)
                    result = route.failure(item, self.failure_topic, now)
            except Exception as exc:  # noqa: BLE001 - the net under a bug, per record
                log.exception("internal error on %s", item.record.coordinates)
                decoded = item if isinstance(item, Decoded) else None
                result = route.failure(route.internal_error(item.record, exc, decoded), self.failure_topic, now)
            out.append(result)
        STATS.add_results(out)
        if self.failures is not None:
            self.failures.add(out)
        return out

    def _enrich(self, item: Decoded, fragment: bytes | None | Exception, now: dt.datetime,
                enriched_at: str) -> Routed:
        if isinstance(fragment, Exception):
            raise fragment
        if fragment is None:
            return route.failure(route.not_found(item), self.failure_topic, now)
        result = route.success(item, fragment, self.output_topic, now, enriched_at)
        if self.limits is not None:
            m = result.message
            size = record_size(m.key, m.value, m.headers)
            if size > self.limits.output:
                too_large = route.output_too_large(item, size, self.limits.output, self.output_topic)
                return route.failure(too_large, self.failure_topic, now)
        return result
