"""flows.core.cache: a TTL per entry, LRU bounds, "not found" apart."""

from flows.core.cache import TtlCache

from .fakes import FakeClock


def test_cache_expires_entries_and_remembers_misses_shorter() -> None:
    clock = FakeClock()
    cache = TtlCache(ttl=60, negative_ttl=5, max_size=10, clock=clock)
    cache.put("a", b"frag")
    cache.put("b", None)
    assert cache.lookup("a") == (True, b"frag") and cache.lookup("b") == (True, None)
    clock.now += 6
    assert cache.lookup("a") == (True, b"frag") and cache.lookup("b") == (False, None)
    clock.now += 60
    assert cache.lookup("a") == (False, None)


def test_cache_evicts_least_recently_used_beyond_max_size() -> None:
    cache = TtlCache(ttl=60, negative_ttl=5, max_size=2, clock=FakeClock())
    cache.put("a", b"1")
    cache.put("b", b"2")
    cache.lookup("a")
    cache.put("c", b"3")
    assert len(cache) == 2 and cache.lookup("b") == (False, None) and cache.lookup("a")[0]
