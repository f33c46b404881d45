"""A bounded cache with a time to live, for a lookup's answers. Pure.

Answers found and "not found" answers live in two LRUs of their own sizes: a stream of
unknown keys evicts only other unknown keys, never the entries that are hit.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

Clock = Callable[[], float]


class _Lru:
    """Entries with an expiry time, least recently used dropped beyond `max_size`."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.entries: OrderedDict[str, tuple[float, bytes | None]] = OrderedDict()

    def put(self, key: str, expires: float, value: bytes | None) -> None:
        self.entries[key] = (expires, value)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_size:
            self.entries.popitem(last=False)


class TtlCache:
    """Values found (for `ttl` seconds, at most `max_size`) and keys not found (for
    `negative_ttl`, at most `negative_max_size`); `None` values remember "not found"."""

    def __init__(
        self,
        ttl: float,
        negative_ttl: float,
        max_size: int,
        negative_max_size: int | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._clock = clock
        self._found = _Lru(max_size)
        self._missing = _Lru(max_size if negative_max_size is None else negative_max_size)

    def __len__(self) -> int:
        return len(self._found.entries) + len(self._missing.entries)

    def lookup(self, key: str) -> tuple[bool, bytes | None]:
        """(found in the cache, the value or None for a remembered miss)."""
        entries = self._found.entries  # the hot path: plain dict operations, no calls
        entry = entries.get(key)
        if entry is None:
            entries = self._missing.entries
            entry = entries.get(key)
            if entry is None:
                return False, None
        if entry[0] <= self._clock():
            del entries[key]
            return False, None
        entries.move_to_end(key)
        return True, entry[1]

    def put(self, key: str, value: bytes | None) -> None:
        """Remember a value, or (None) that the key was not found."""
        if value is None:
            if self.negative_ttl > 0 and self._missing.max_size > 0:
                self._found.entries.pop(key, None)
                self._missing.put(key, self._clock() + self.negative_ttl, None)
        elif self.ttl > 0 and self._found.max_size > 0:
            self._missing.entries.pop(key, None)
            self._found.put(key, self._clock() + self.ttl, value)

    def invalidate(self, keys: Iterable[str]) -> int:
        """Forget these keys, found or not found; how many entries were dropped."""
        dropped = 0
        for key in keys:
            dropped += self._found.entries.pop(key, None) is not None
            dropped += self._missing.entries.pop(key, None) is not None
        return dropped

    def clear(self) -> None:
        """Forget everything."""
        self._found.entries.clear()
        self._missing.entries.clear()


class Inbox:
    """Changes announced from another thread (a change feed's listener), applied to a cache
    by the thread that owns it, before its next lookup: the cache itself stays single-threaded.
    `post(keys)` forgets those keys, `post(None)` everything (appending to a deque is atomic)."""

    def __init__(self) -> None:
        self._posted: deque[tuple[str, ...] | None] = deque()

    def post(self, keys: Iterable[str] | None) -> None:
        """Announce changed keys (None: anything may have changed)."""
        self._posted.append(None if keys is None else tuple(keys))

    def apply(self, cache: TtlCache) -> None:
        """Apply what was posted so far to `cache` (its owner's thread)."""
        posted = self._posted
        while posted:
            keys = posted.popleft()
            if keys is None:
                cache.clear()
            else:
                cache.invalidate(keys)
