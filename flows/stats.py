"""Process-wide counters: the periodic progress line and the Prometheus metrics read them.

Updated once per batch under a lock (workers are threads of one process).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from flows.model import Routed

log = logging.getLogger("flows.progress")


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records_in = 0
        self.enriched = 0
        self.failed: Counter[str] = Counter()
        self.cache_hits = 0
        self.cache_misses = 0
        self.lookup_queries = 0
        self.started = time.monotonic()

    def add_input(self, n: int) -> None:
        with self._lock:
            self.records_in += n

    def add_lookups(self, hits: int, misses: int, queries: int) -> None:
        with self._lock:
            self.cache_hits += hits
            self.cache_misses += misses
            self.lookup_queries += queries

    def add_results(self, results: Iterable[Routed]) -> None:
        ok = 0
        failed: Counter[str] = Counter()
        for r in results:
            if r.ok:
                ok += 1
            else:
                failed[r.history.error_code or "unknown"] += 1
        with self._lock:
            self.enriched += ok
            self.failed.update(failed)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lookups = self.cache_hits + self.cache_misses
            elapsed = max(time.monotonic() - self.started, 1e-9)
            return {
                "records_in": self.records_in,
                "enriched": self.enriched,
                "failed": dict(self.failed),
                "failed_total": sum(self.failed.values()),
                "cache_hits": self.cache_hits,
                "cache_misses": self.cache_misses,
                "cache_hit_ratio": round(self.cache_hits / lookups, 4) if lookups else None,
                "lookup_queries": self.lookup_queries,
                "elapsed_s": round(elapsed, 3),
                "records_per_s": round(self.records_in / elapsed, 1),
            }


STATS = Stats()


class ProgressReporter:
    """Logs one progress line every `interval` seconds from a daemon thread, and a last one
    when stopped."""

    def __init__(self, interval: float, stats: Stats = STATS) -> None:
        self.interval = interval
        self.stats = stats
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.emit("progress")

    def emit(self, msg: str) -> None:
        log.info(msg, extra={"fields": self.stats.snapshot()})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self.emit("final progress")
