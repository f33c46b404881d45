"""The pipeline's counters: one set, read by the progress line and by Prometheus.

Counters are plain numbers under a lock, updated once per batch (the workers of a process
are threads; each process of a cluster has its own); Prometheus reads them at scrape time
through a collector, so there is nothing to keep in step. Durations are Prometheus
histograms. Bytewax's dataflow API (`BYTEWAX_DATAFLOW_API_ENABLED`) serves the default
registry on `/metrics`: registering there is all it takes.

Lookups and outputs are labels (`lookup="customers"`, `output="history"`), so a new one
shows up without a new metric.
"""

from __future__ import annotations

import importlib.metadata
import platform
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

import flows
from flows.core.model import Code, Outcome

PREFIX = "enrichment"
# the dependencies as the retry policy names them (flows/retry.py)
DEPENDENCIES = ("kafka", "postgresql", "cassandra", "schema_registry")
FALLBACK_KINDS = (
    "output_refused",
    "dead_letter_compressed",
    "dead_letter_without_headers",
    "dead_letter_without_value",
    "dead_letter_keyed",
)
# a lookup is one query per batch of distinct keys (about a millisecond on a local server);
# an output's write is one batch (tens of milliseconds); both may take seconds while a
# dependency is retried
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    180.0,
)


class Metrics:
    """Every counter of a process; `registry=None` keeps them out of Prometheus (tests)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.records_in = 0
        self.enriched = 0
        self.delivered = 0
        self.failed: Counter[str] = Counter({code.value: 0 for code in Code})
        self.cache_hits: Counter[str] = Counter()
        self.cache_misses: Counter[str] = Counter()
        self.lookup_queries: Counter[str] = Counter()
        self.lookup_refused: Counter[str] = Counter()
        self.written: Counter[str] = Counter()
        self.degraded: Counter[str] = Counter()
        self.fallbacks: Counter[str] = Counter({kind: 0 for kind in FALLBACK_KINDS})
        self.retries: Counter[str] = Counter({name: 0 for name in DEPENDENCIES})
        self.cache_invalidations = 0  # keys announced changed by the reference data's source
        self.cache_resets = 0  # caches cleared because the change feed was lost
        self.up: dict[str, int] = dict.fromkeys(DEPENDENCIES, 1)  # the start-up checks passed
        self._high: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._lookup_seconds: Histogram | None = None
        self._write_seconds: Histogram | None = None
        if registry is not None:
            self._lookup_seconds = Histogram(
                f"{PREFIX}_lookup_duration_seconds",
                "Duration of one lookup fetch, retries included",
                ("lookup",),
                buckets=LATENCY_BUCKETS,
                registry=registry,
            )
            self._write_seconds = Histogram(
                f"{PREFIX}_output_write_duration_seconds",
                "Duration of writing one batch to an output, retries included",
                ("output",),
                buckets=LATENCY_BUCKETS,
                registry=registry,
            )
            registry.register(_Collector(self))

    def add_input(self, n: int) -> None:
        """Records read from the input topic."""
        with self._lock:
            self.records_in += n

    def add_results(self, outcomes: Iterable[Outcome]) -> None:
        """Outcomes of the enrich step: enriched, or failed by code."""
        ok = 0
        failed: Counter[str] = Counter()
        for r in outcomes:
            if r.ok:
                ok += 1
            else:
                failed[r.history.error_code or "unknown"] += 1
        with self._lock:
            self.enriched += ok
            self.failed.update(failed)

    def add_lookups(self, lookup: str, hits: int, misses: int, queries: int) -> None:
        """A resolver's cache hits and misses and its fetches, for one batch."""
        with self._lock:
            self.cache_hits[lookup] += hits
            self.cache_misses[lookup] += misses
            self.lookup_queries[lookup] += queries

    def observe_lookup(self, lookup: str, seconds: float) -> None:
        """One fetch of a lookup."""
        if self._lookup_seconds is not None:
            self._lookup_seconds.labels(lookup).observe(seconds)

    def add_lookup_refused(self, lookup: str, n: int) -> None:
        """Keys the lookup's store refused (their records are "not found")."""
        with self._lock:
            self.lookup_refused[lookup] += n

    def add_written(self, output: str, n: int, seconds: float) -> None:
        """One batch acknowledged by an output."""
        with self._lock:
            self.written[output] += n
        if self._write_seconds is not None:
            self._write_seconds.labels(output).observe(seconds)

    def add_delivered(self, n: int) -> None:
        """Records whose every output has acknowledged them."""
        with self._lock:
            self.delivered += n

    def add_degraded(self, output: str, n: int) -> None:
        """Items an output's store refused whole and took in part (a history row without payload)."""
        with self._lock:
            self.degraded[output] += n

    def add_fallbacks(self, kinds: Iterable[str]) -> None:
        """Messages a topic refused and that were delivered another way."""
        counts = Counter(kinds)
        with self._lock:
            self.fallbacks.update(counts)

    def retried(self, dependency: str) -> None:
        """A call to a dependency failed in a way that may pass and will be tried again."""
        with self._lock:
            self.retries[dependency] += 1

    def add_cache_invalidations(self, n: int) -> None:
        """Changes the reference data's source announced (CACHE_INVALIDATION=notify)."""
        with self._lock:
            self.cache_invalidations += n

    def cache_reset(self) -> None:
        """The change feed was lost and is back: every cache of the process was cleared."""
        with self._lock:
            self.cache_resets += 1

    def dependency_up(self, dependency: str, up: bool) -> None:
        """A dependency answered again, or failed in a way that may pass."""
        with self._lock:
            self.up[dependency] = int(up)

    def set_high(self, topic: str, partition: int, offset: int) -> None:
        """The end of an input partition, as its consumer last saw it."""
        with self._lock:
            self._high[(topic, partition)] = offset

    def set_committed(self, topic: str, partition: int, offset: int) -> None:
        """The offset committed to the consumer group for an input partition."""
        with self._lock:
            self._committed[(topic, partition)] = offset

    def forget_partitions(self, topic: str, partitions: list[int]) -> None:
        """Partitions this process no longer reads (they moved to another group member):
        their lag is reported by their new reader."""
        with self._lock:
            for p in partitions:
                self._high.pop((topic, p), None)
                self._committed.pop((topic, p), None)

    def lag(self) -> dict[tuple[str, int], int]:
        """Per input partition: records after the committed offset (the group's lag)."""
        with self._lock:
            return {key: max(0, high - self._committed.get(key, 0)) for key, high in self._high.items()}

    def in_flight(self) -> int:
        """Records read and not yet delivered everywhere (never below 0: the Lambda delivers
        records it did not read through a source)."""
        with self._lock:
            return max(0, self.records_in - self.delivered)

    def snapshot(self) -> dict[str, Any]:
        """The progress line's fields."""
        with self._lock:
            hits, misses = sum(self.cache_hits.values()), sum(self.cache_misses.values())
            elapsed = max(time.monotonic() - self.started, 1e-9)
            failed = {code: n for code, n in self.failed.items() if n}
            out: dict[str, Any] = {
                "records_in": self.records_in,
                "enriched": self.enriched,
                "failed": failed,
                "failed_total": sum(failed.values()),
                "cache_hits": hits,
                "cache_misses": misses,
                "cache_hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
                "lookup_queries": sum(self.lookup_queries.values()),
                "elapsed_s": round(elapsed, 3),
                "records_per_s": round(self.records_in / elapsed, 1),
            }
            extra = {
                "delivery_fallbacks": {k: n for k, n in self.fallbacks.items() if n},
                "lookup_refused": sum(self.lookup_refused.values()),
                "degraded": dict(self.degraded),
            }
        out.update({k: v for k, v in extra.items() if v})
        return out


def _build() -> dict[str, str]:
    import confluent_kafka

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return ""

    return {
        "version": flows.__version__,
        "python": platform.python_version(),
        "bytewax": version("bytewax"),  # not installed in the Lambda
        "confluent_kafka": version("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
        "scylla_driver": version("scylla-driver"),
        "psycopg": version("psycopg"),
    }


BUILD = _build()
# a counter's `_created` series doubles the series count for a value nobody reads
disable_created_metrics()  # type: ignore[no-untyped-call]


class _Collector(Collector):
    """The counters as Prometheus reads them at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Any]:
        m = self.m
        with m._lock:
            yield _counter("records_in", "Records read from the input topic", m.records_in)
            yield _counter("records_enriched", "Records enriched (bound for the output topic)", m.enriched)
            yield _counter("records_failed", "Records bound for the failure topic, by error.code", m.failed, "code")
            yield _counter("cache_hits", "Lookups answered by the per-worker cache", m.cache_hits, "lookup")
            yield _counter("cache_misses", "Lookups the cache could not answer", m.cache_misses, "lookup")
            yield _counter(
                "lookup_queries", "Lookup fetches (one per chunk of distinct keys)", m.lookup_queries, "lookup"
            )
            yield _counter(
                "lookup_refused", "Keys a lookup's store refused (answered as not found)", m.lookup_refused, "lookup"
            )
            yield _counter(
                "output_written", "Items acknowledged by an output (history rows, messages)", m.written, "output"
            )
            yield _counter(
                "output_degraded", "Items an output's store refused whole and took in part", m.degraded, "output"
            )
            yield _counter(
                "delivery_fallbacks",
                "Messages a topic refused at run time and delivered another way, by kind",
                m.fallbacks,
                "kind",
            )
            yield _counter(
                "dependency_retries",
                "Calls to a dependency that failed in a way that may pass and were tried again",
                m.retries,
                "dependency",
            )
            yield _counter(
                "cache_invalidations",
                "Changed keys the reference data's source announced (each dropped from every cache)",
                m.cache_invalidations,
            )
            yield _counter(
                "cache_resets",
                "Times every cache was cleared because the change feed's connection was lost",
                m.cache_resets,
            )
            up = GaugeMetricFamily(
                f"{PREFIX}_dependency_up",
                "1 while the dependency answers; 0 from a failure that may pass until it answers again",
                labels=["dependency"],
            )
            for name, value in sorted(m.up.items()):
                up.add_metric([name], value)
            in_flight = max(0, m.records_in - m.delivered)
        yield up
        info = GaugeMetricFamily(f"{PREFIX}_build_info", "The running build: always 1", labels=list(BUILD))
        info.add_metric(list(BUILD.values()), 1)
        yield info
        yield GaugeMetricFamily(
            f"{PREFIX}_records_in_flight", "Records read and not yet delivered to every output", value=in_flight
        )
        lag = GaugeMetricFamily(
            f"{PREFIX}_consumer_lag",
            "Records of an input partition after the offset committed to CONSUMER_GROUP (up to the end this "
            "process last saw)",
            labels=["topic", "partition"],
        )
        for (topic, partition), n in sorted(m.lag().items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag


def _counter(name: str, doc: str, value: int | Counter[str], label: str | None = None) -> CounterMetricFamily:
    if label is None:
        assert isinstance(value, int)
        return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)
    family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=[label])
    assert isinstance(value, Counter)
    for key, n in sorted(value.items()):
        family.add_metric([key], n)
    return family
