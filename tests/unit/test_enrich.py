"""flows.core.enrich: resolvers with their caches, one fetch per batch of misses."""

import datetime as dt

from flows.core.cache import TtlCache
from flows.core.decode import decode_record
from flows.core.enrich import Enricher, Resolver
from flows.core.model import Code, Customer, Decoded, Failure
from flows.core.sizes import TopicLimits

from .fakes import ALICE, GOOD, FakeClock, MemoryLookup, record


def resolver(lookup: MemoryLookup, cache: TtlCache | None = None, batch: int = 1000) -> Resolver:
    """The customers resolver, as flows.app.compose builds it, over a fake lookup."""
    return Resolver(
        "customers",
        "customer",
        lambda e: e.customer_id,
        "$.customer_id",
        Code.CUSTOMER_NOT_FOUND,
        lookup,
        cache if cache is not None else TtlCache(60, 5, 100, clock=FakeClock()),
        batch,
    )


def items(*customer_ids: str) -> list[Decoded | Failure]:
    out: list[Decoded | Failure] = []
    for i, cid in enumerate(customer_ids):
        value = GOOD.replace(b'"C1"', f'"{cid}"'.encode())
        d = decode_record(record(value, offset=i), 1 << 20)
        assert isinstance(d, Decoded)
        out.append(d)
    return out


def enricher(lookup: MemoryLookup, clock: FakeClock | None = None, batch: int = 1000) -> Enricher:
    cache = TtlCache(60, 5, 100, clock=clock or FakeClock())
    return Enricher(
        [resolver(lookup, cache, batch)], "out", "dlq", wallclock=lambda: dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    )


def test_one_query_per_batch_of_distinct_missing_ids() -> None:
    bob = Customer("C2", "Bob", "smb", "FR", "active")
    lookup = MemoryLookup({"C1": ALICE, "C2": bob})
    e = enricher(lookup)
    results = e.process(items("C1", "C2", "C1", "C9", "C2"))
    assert lookup.calls == [["C1", "C2", "C9"]]
    assert [r.ok for r in results] == [True, True, True, False, True]
    assert results[3].code is not None and results[3].code.value == "customer_not_found"
    # everything, including the miss, is cached now
    e.process(items("C1", "C9"))
    assert len(lookup.calls) == 1


def test_misses_are_chunked() -> None:
    lookup = MemoryLookup({})
    enricher(lookup, batch=2).process(items("a", "b", "c", "d", "e"))
    assert lookup.calls == [["a", "b"], ["c", "d"], ["e"]]


def test_not_found_is_asked_again_after_the_negative_ttl() -> None:
    clock = FakeClock()
    lookup = MemoryLookup({})
    e = enricher(lookup, clock)
    e.process(items("C7"))
    lookup.customers["C7"] = Customer("C7", "New", "smb", "PL", "active")
    assert not e.process(items("C7"))[0].ok  # still remembered as missing
    clock.now += 6
    assert e.process(items("C7"))[0].ok
    assert len(lookup.calls) == 2


def test_an_exception_while_building_one_record_becomes_internal_error() -> None:
    # a lookup that hands back a customer the encoder can't serialize: the net under a bug
    broken = Customer("C1", object(), "retail", "DE", "active")  # type: ignore[arg-type]
    lookup = MemoryLookup({"C1": broken, "C2": Customer("C2", "Bob", "smb", "FR", "active")})
    results = enricher(lookup).process(items("C2", "C1", "C2"))
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].history.error_code == "internal_error"
    assert dict(results[1].message.headers)["error.stage"] == b"internal"


def test_unknown_ids_do_not_push_known_customers_out_of_the_cache() -> None:
    known = {f"K{i}": Customer(f"K{i}", "n", "s", "c", "active") for i in range(1000)}
    lookup = MemoryLookup(known)
    cache = TtlCache(ttl=600, negative_ttl=60, max_size=2000, negative_max_size=1000, clock=FakeClock())
    e = Enricher([resolver(lookup, cache)], "out", "dlq")
    e.process(items(*known))
    asked = len(lookup.calls)
    for start in range(0, 5000, 500):
        e.process(items(*(f"U{i}" for i in range(start, start + 500))))
    e.process(items(*known))  # the second pass over the known ids: all hits
    assert len(lookup.calls) == asked + 10
    assert len(cache) == 1000 + 1000


def test_an_enriched_message_too_large_for_the_output_topic_is_payload_too_large() -> None:
    lookup = MemoryLookup({"C1": ALICE})
    small = Enricher([resolver(lookup)], "out", "dlq", limits=TopicLimits(output=400, failure=10_000))
    [r] = small.process(items("C1"))
    assert not r.ok and r.code is Code.PAYLOAD_TOO_LARGE and r.message.topic == "dlq"
    headers = dict(r.message.headers)
    assert headers["error.stage"] == b"enrich" and b"the output topic out accepts 400" in headers["error.message"]
    assert r.history.event_id == "e1" and r.history.customer_id == "C1"
    roomy = Enricher([resolver(lookup)], "out", "dlq", limits=TopicLimits(output=10_000, failure=10_000))
    assert roomy.process(items("C1"))[0].ok


def test_a_second_lookup_adds_its_member_and_its_own_not_found_code() -> None:
    """A lookup is an entry: its member, the event's key, its code; the output gets each."""

    class Segments:
        def fetch(self, keys):  # type: ignore[no-untyped-def]
            return {k: {"tier": "gold"} for k in keys if k == "login"}

        def close(self) -> None:
            pass

    segments = Resolver(
        "event_types",
        "event_type_info",
        lambda e: e.event_type,
        "$.event_type",
        Code.CUSTOMER_NOT_FOUND,
        Segments(),
        TtlCache(60, 5, 100),
    )  # type: ignore[arg-type]
    e = Enricher([resolver(MemoryLookup({"C1": ALICE})), segments], "out", "dlq")
    [good] = e.process(items("C1"))
    assert good.ok and b'"customer":{"name":"Alice"' in (good.message.value or b"")
    assert b'"event_type_info":{"tier":"gold"}' in (good.message.value or b"")
    assert e.added_members == {"customer", "event_type_info", "enriched_at"}


def test_a_lookup_observer_hears_hits_misses_and_queries() -> None:
    seen: list[tuple[str, int, int, int]] = []

    class Observer:
        def add_lookups(self, lookup: str, hits: int, misses: int, queries: int) -> None:
            seen.append((lookup, hits, misses, queries))

    e = Enricher([resolver(MemoryLookup({"C1": ALICE}))], "out", "dlq", observer=Observer())
    e.process(items("C1", "C1", "C2"))
    e.process(items("C1"))
    assert seen == [("customers", 0, 3, 1), ("customers", 1, 0, 0)]  # a repeated miss counts as a miss


def test_a_resolver_applies_announced_changes_before_each_batch() -> None:
    """A customer changed (or created) at the source is fetched again by the next batch,
    whatever the TTL; the others stay cached."""
    from flows.core.cache import Inbox
    from flows.core.model import Customer

    lookup = MemoryLookup({"C1": ALICE})
    r = resolver(lookup)
    r.changes = Inbox()
    r.resolve(items("C1", "C9"), None)
    assert lookup.calls == [["C1", "C9"]]
    r.resolve(items("C1", "C9"), None)
    assert len(lookup.calls) == 1, "both cached: C1 found, C9 not found"
    lookup.customers["C1"] = Customer("C1", "Alice B", "smb", "FR", "blocked")
    lookup.customers["C9"] = Customer("C9", "Newcomer", "smb", "DE", "active")
    r.changes.post(["C1", "C9"])
    resolved = r.resolve(items("C1", "C9"), None)
    assert lookup.calls[-1] == ["C1", "C9"]
    assert b"blocked" in resolved["C1"] and b"Newcomer" in resolved["C9"]  # type: ignore[operator]
