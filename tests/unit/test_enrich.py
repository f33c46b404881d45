import datetime as dt

from flows.decode import decode_record
from flows.enrich import CustomerCache, Enricher
from flows.failurelog import FailureLog
from flows.model import Code, Customer, Decoded, Failure
from flows.sizes import TopicLimits

from .fakes import ALICE, GOOD, FakeClock, MemoryLookup, record


def test_cache_expires_entries_and_remembers_misses_shorter() -> None:
    clock = FakeClock()
    cache = CustomerCache(ttl=60, negative_ttl=5, max_size=10, clock=clock)
    cache.put("a", b"frag")
    cache.put("b", None)
    assert cache.lookup("a") == (True, b"frag") and cache.lookup("b") == (True, None)
    clock.now += 6
    assert cache.lookup("a") == (True, b"frag") and cache.lookup("b") == (False, None)
    clock.now += 60
    assert cache.lookup("a") == (False, None)


def test_cache_evicts_least_recently_used_beyond_max_size() -> None:
    cache = CustomerCache(ttl=60, negative_ttl=5, max_size=2, clock=FakeClock())
    cache.put("a", b"1")
    cache.put("b", b"2")
    cache.lookup("a")
    cache.put("c", b"3")
    assert len(cache) == 2 and cache.lookup("b") == (False, None) and cache.lookup("a")[0]


def items(*customer_ids: str) -> list[Decoded | Failure]:
    out: list[Decoded | Failure] = []
    for i, cid in enumerate(customer_ids):
        value = GOOD.replace(b'"C1"', f'"{cid}"'.encode())
        d = decode_record(record(value, offset=i), 1 << 20)
        assert isinstance(d, Decoded)
        out.append(d)
    return out


def enricher(lookup: MemoryLookup, clock: FakeClock | None = None, batch: int = 1000) -> Enricher:
    cache = CustomerCache(60, 5, 100, clock=clock or FakeClock())
    return Enricher(lookup, cache, "out", "dlq", batch, wallclock=lambda: dt.datetime(2024, 1, 1, tzinfo=dt.UTC))


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
    cache = CustomerCache(ttl=600, negative_ttl=60, max_size=2000, negative_max_size=1000, clock=FakeClock())
    e = Enricher(lookup, cache, "out", "dlq")
    e.process(items(*known))
    asked = len(lookup.calls)
    for start in range(0, 5000, 500):
        e.process(items(*(f"U{i}" for i in range(start, start + 500))))
    e.process(items(*known))  # the second pass over the known ids: all hits
    assert len(lookup.calls) == asked + 10
    assert len(cache) == 1000 + 1000


def test_an_enriched_message_too_large_for_the_output_topic_is_payload_too_large() -> None:
    lookup = MemoryLookup({"C1": ALICE})
    small = Enricher(lookup, CustomerCache(60, 5, 100), "out", "dlq", limits=TopicLimits(output=400, failure=10_000))
    [r] = small.process(items("C1"))
    assert not r.ok and r.code is Code.PAYLOAD_TOO_LARGE and r.message.topic == "dlq"
    headers = dict(r.message.headers)
    assert headers["error.stage"] == b"enrich" and b"the output topic out accepts 400" in headers["error.message"]
    assert r.history.event_id == "e1" and r.history.customer_id == "C1"
    roomy = Enricher(lookup, CustomerCache(60, 5, 100), "out", "dlq", limits=TopicLimits(output=10_000, failure=10_000))
    assert roomy.process(items("C1"))[0].ok


def test_failures_are_logged_aggregated() -> None:
    failures = FailureLog()
    e = Enricher(MemoryLookup({}), CustomerCache(60, 5, 100), "out", "dlq", failures=failures)
    e.process(items(*(f"X{i}" for i in range(50))))
    assert failures._counts == {"customer_not_found": 50}
