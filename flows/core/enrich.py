"""Enrichment: each lookup adds a member to the event, from a cache in front of a batched
fetch. Pure: the lookups are passed in (`flows.adapters.postgres` has the customers one).

A `Resolver` is one lookup of the enrichment: the member it adds (`customer`), the key of
the event it looks up (`customer_id`), the failure code of a key without a row
(`customer_not_found`), its fetch and its cache. Misses of one batch are fetched together,
one call per chunk of distinct keys; every resolver of the flow runs on every batch.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from flows.core import outcome
from flows.core.cache import Inbox, TtlCache
from flows.core.model import Code, Decoded, Event, Failure, Outcome
from flows.core.sizes import TopicLimits, record_size

log = logging.getLogger(__name__)


class Lookup(Protocol):
    """Reads reference data by key; one call is one round trip for all the keys given.
    Returns the member's value (JSON-encodable) for each key found."""

    def fetch(self, keys: Sequence[str]) -> Mapping[str, object]:
        """The member's value for each key found."""

    def close(self) -> None:
        """Let the lookup's connections go."""


class LookupObserver(Protocol):
    """Where a resolver reports its cache hits, misses and fetches (the metrics)."""

    def add_lookups(self, lookup: str, hits: int, misses: int, queries: int) -> None:
        """One batch's cache hits and misses and fetches of `lookup`."""


@dataclass
class Resolver:
    """One lookup of the enrichment; `name` labels its metrics."""

    name: str
    member: str
    key: Callable[[Event], str]
    field: str  # the key's JSON path, for error.field
    not_found: Code
    lookup: Lookup
    cache: TtlCache
    batch_size: int = 1000
    changes: Inbox | None = None  # keys changed at the source, dropped before each batch

    def resolve(self, items: Sequence[Decoded | Failure], observer: LookupObserver | None) -> dict[str, object]:
        """The member's text (bytes), None for "not found" or the exception that building
        it raised, for each key of the batch: cache first, then one fetch per chunk."""
        if self.changes is not None:
            self.changes.apply(self.cache)
        resolved: dict[str, object] = {}
        missing: dict[str, None] = {}
        hits = misses = 0
        key = self.key
        for item in items:
            if type(item) is not Decoded:
                continue
            k = key(item.event)
            if k in resolved:
                hits += 1
                continue
            if k in missing:
                misses += 1
                continue
            found, fragment = self.cache.lookup(k)
            if found:
                resolved[k] = fragment
                hits += 1
            else:
                missing[k] = None
                misses += 1
        queries = 0
        for chunk in _chunks(list(missing), self.batch_size):
            values = self.lookup.fetch(chunk)
            queries += 1
            for k in chunk:
                value = values.get(k)
                try:
                    fragment = outcome.member_fragment(self.member, value) if value is not None else None
                except Exception as exc:  # noqa: BLE001 - fails only the records of this key
                    resolved[k] = exc
                    continue
                self.cache.put(k, fragment)
                resolved[k] = fragment
        if observer is not None:
            observer.add_lookups(self.name, hits, misses, queries)
        return resolved


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Enricher:
    """Turns a batch of decoded records and failures into outcomes."""

    def __init__(
        self,
        resolvers: Sequence[Resolver],
        output_topic: str,
        failure_topic: str,
        wallclock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        limits: TopicLimits | None = None,
        observer: LookupObserver | None = None,
    ) -> None:
        self.resolvers = list(resolvers)
        self.output_topic = output_topic
        self.failure_topic = failure_topic
        self._now = wallclock
        self.limits = limits
        self.observer = observer
        # the members the output sets itself (an input's own are replaced)
        self.added_members = frozenset({*(r.member for r in self.resolvers), "enriched_at"})

    def process(self, items: Sequence[Decoded | Failure]) -> list[Outcome]:
        """One outcome per item, in order; an unexpected exception fails its item alone."""
        resolved = [r.resolve(items, self.observer) for r in self.resolvers]
        now = self._now()
        enriched_at = outcome.rfc3339(now)
        out: list[Outcome] = []
        for item in items:
            try:
                if type(item) is Decoded:
                    result = self._enrich(item, resolved, now, enriched_at)
                else:
                    assert isinstance(item, Failure)
                    result = outcome.failure(item, self.failure_topic, now)
            except Exception as exc:  # noqa: BLE001 - the net under a bug, per record
                log.exception("internal error on %s", item.record.coordinates)
                decoded = item if isinstance(item, Decoded) else None
                result = outcome.failure(outcome.internal_error(item.record, exc, decoded), self.failure_topic, now)
            out.append(result)
        return out

    def _enrich(self, item: Decoded, resolved: list[dict[str, object]], now: dt.datetime, enriched_at: str) -> Outcome:
        fragments: list[bytes] = []
        for resolver, answers in zip(self.resolvers, resolved, strict=True):
            key = resolver.key(item.event)
            fragment = answers[key]
            if isinstance(fragment, Exception):
                raise fragment
            if fragment is None:
                missed = outcome.not_found(item, resolver.member, resolver.field, key, resolver.not_found)
                return outcome.failure(missed, self.failure_topic, now)
            assert isinstance(fragment, bytes)
            fragments.append(fragment)
        result = outcome.success(item, fragments, self.output_topic, now, enriched_at, self.added_members)
        if self.limits is not None:
            m = result.message
            size = record_size(m.key, m.value, m.headers)
            if size > self.limits.output:
                too_large = outcome.output_too_large(item, size, self.limits.output, self.output_topic)
                return outcome.failure(too_large, self.failure_topic, now)
        return result


def close_lookups(enricher: Enricher) -> None:
    """Close an enricher's lookups."""
    for resolver in enricher.resolvers:
        resolver.lookup.close()
