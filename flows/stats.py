"""Process-wide counters: the periodic progress line and the Prometheus metrics read them.

Updated once per batch under a lock (workers are threads of one process; each process of a
cluster has its own). `STATS` also feeds the Prometheus collectors of `flows.metrics`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from flows.metrics import PipelineMetrics
from flows.model import Routed

log = logging.getLogger("flows.progress")


class Stats:
    def __init__(self, metrics: PipelineMetrics | None = None) -> None:
        self._lock = threading.Lock()
        self.records_in = 0
        self.enriched = 0
        self.failed: Counter[str] = Counter()
        self.cache_hits = 0
        self.cache_misses = 0
        self.lookup_queries = 0
        self.history_rows = 0
        self.fallbacks: Counter[str] = Counter()
        self.lookup_refused = 0
        self.history_degraded = 0
        self.started = time.monotonic()
        self.metrics = metrics
        if metrics is not None:
            metrics.track_in_flight(self.in_flight)

    def add_input(self, n: int) -> None:
        with self._lock:
            self.records_in += n
        if self.metrics is not None:
            self.metrics.records_in.inc(n)

    def add_lookups(self, hits: int, misses: int, queries: int) -> None:
        with self._lock:
            self.cache_hits += hits
            self.cache_misses += misses
            self.lookup_queries += queries
        if self.metrics is not None:
            self.metrics.cache_hits.inc(hits)
            self.metrics.cache_misses.inc(misses)
            self.metrics.lookup_queries.inc(queries)

    def observe_lookup(self, seconds: float) -> None:
        """One PostgreSQL lookup (`flows.pg`)."""
        if self.metrics is not None:
            self.metrics.pg_lookup_seconds.observe(seconds)

    def add_history(self, rows: int, seconds: float) -> None:
        """One batch of history rows acknowledged (`flows.history`)."""
        with self._lock:
            self.history_rows += rows
        if self.metrics is not None:
            self.metrics.history_rows.inc(rows)
            self.metrics.history_write_seconds.observe(seconds)

    def add_fallbacks(self, kinds: Iterable[str]) -> None:
        """Messages a topic refused and that were delivered another way (`flows.delivery`)."""
        counts = Counter(kinds)
        with self._lock:
            self.fallbacks.update(counts)
        if self.metrics is not None:
            for kind, n in counts.items():
                self.metrics.fallbacks.labels(kind).inc(n)

    def add_lookup_refused(self, n: int) -> None:
        with self._lock:
            self.lookup_refused += n
        if self.metrics is not None:
            self.metrics.lookup_refused.inc(n)

    def add_history_degraded(self, n: int) -> None:
        with self._lock:
            self.history_degraded += n
        if self.metrics is not None:
            self.metrics.history_degraded.inc(n)

    def in_flight(self) -> float:
        """Records read whose history row is not written yet (never below 0: the Lambda
        writes history without reading through the source)."""
        with self._lock:
            return float(max(0, self.records_in - self.history_rows))

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
        if self.metrics is not None:
            self.metrics.enriched.inc(ok)
            for code, n in failed.items():
                self.metrics.failed.labels(code).inc(n)

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
                **({"delivery_fallbacks": dict(self.fallbacks)} if self.fallbacks else {}),
                **({"lookup_refused": self.lookup_refused} if self.lookup_refused else {}),
                **({"history_rows_degraded": self.history_degraded} if self.history_degraded else {}),
                "elapsed_s": round(elapsed, 3),
                "records_per_s": round(self.records_in / elapsed, 1),
            }


STATS = Stats(PipelineMetrics())


class ProgressReporter:
    """Logs one progress line every `interval` seconds from a daemon thread, and a last one
    when stopped."""

    def __init__(self, interval: float, stats: Stats = STATS,
                 flushers: Sequence[Callable[[], None]] = ()) -> None:
        self.interval = interval
        self.stats = stats
        self.flushers = list(flushers)  # the aggregated log lines (flows.failurelog), each interval
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
        for flush in self.flushers:
            flush()
        log.info(msg, extra={"fields": self.stats.snapshot()})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # runs at exit, when a host program (a test runner) may have closed the stream
            # the handler writes to: skip the line then rather than print a logging error
            logging.raiseExceptions = False
            self.emit("final progress")
