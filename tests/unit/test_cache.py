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


def test_invalidate_drops_found_and_not_found_entries_and_clear_drops_all() -> None:
    cache = TtlCache(60, 60, 10, clock=FakeClock())
    cache.put("a", b"A")
    cache.put("b", None)  # remembered as not found
    cache.put("c", b"C")
    assert cache.invalidate(["a", "b", "zzz"]) == 2
    assert cache.lookup("a") == (False, None) and cache.lookup("b") == (False, None)
    assert cache.lookup("c") == (True, b"C")
    cache.clear()
    assert len(cache) == 0


def test_an_inbox_applies_changes_posted_from_another_thread_in_order() -> None:
    import threading

    from flows.core.cache import Inbox

    cache = TtlCache(60, 60, 10, clock=FakeClock())
    inbox = Inbox()
    for key in "abc":
        cache.put(key, key.encode())
    poster = threading.Thread(target=lambda: (inbox.post(["a"]), inbox.post(None)))
    poster.start()
    poster.join()
    cache.put("d", b"D")  # cached after the posts, before they are applied: cleared too
    inbox.apply(cache)
    assert len(cache) == 0
    cache.put("a", b"A2")
    inbox.post(["b"])
    inbox.apply(cache)
    assert cache.lookup("a") == (True, b"A2"), "only what was posted is dropped"
