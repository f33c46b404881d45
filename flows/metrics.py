"""The pipeline's Prometheus metrics, in prometheus_client's default registry.

Bytewax's dataflow API (`BYTEWAX_DATAFLOW_API_ENABLED` set to anything, port
`BYTEWAX_DATAFLOW_API_PORT`, default 3030) serves `/metrics`: its own Rust-side metrics
followed by `generate_latest(REGISTRY)` of the default Python registry
(`bytewax._metrics`). Registering here is therefore all it takes; there is no second HTTP
server. Every process of a cluster serves its own figures; sum them over pods.

`flows.stats.Stats` updates these once per batch, never per record. Names follow
Prometheus conventions: counters end in `_total`, durations are `_seconds` histograms.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from flows.model import Code

PREFIX = "enrichment"
FALLBACK_KINDS = ("output_refused", "dead_letter_compressed", "dead_letter_without_headers",
                  "dead_letter_without_value")
# a PostgreSQL lookup is one query per batch of distinct ids (about a millisecond on a
# local server); a history write is one batch of rows (tens of milliseconds); both may
# take seconds while a dependency is retried
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 180.0)


class PipelineMetrics:
    """One set of collectors; the dataflow uses the one in `flows.stats.STATS`."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=registry)

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, buckets=LATENCY_BUCKETS, registry=registry)

        self.records_in = counter("records_in", "Records read from the input topic")
        self.enriched = counter("records_enriched", "Records enriched (bound for the output topic)")
        self.failed = counter("records_failed", "Records bound for the failure topic, by error.code", ("code",))
        for code in Code:  # every code present from the start, so rates and alerts see zeros
            self.failed.labels(code.value)
        self.cache_hits = counter("cache_hits", "Customer lookups answered by the per-worker cache")
        self.cache_misses = counter("cache_misses", "Customer lookups that went to PostgreSQL")
        self.lookup_queries = counter("pg_lookup_queries", "PostgreSQL lookup queries (one per chunk of ids)")
        self.pg_lookup_seconds = histogram(
            "pg_lookup_duration_seconds", "Duration of one PostgreSQL customer lookup, retries included")
        self.history_rows = counter("history_rows_written", "History rows acknowledged by ScyllaDB/Cassandra")
        self.history_write_seconds = histogram(
            "history_write_duration_seconds", "Duration of writing one batch of history rows, retries included")
        self.fallbacks = counter(
            "delivery_fallbacks", "Messages a topic refused at run time and delivered another way, by kind "
            "(output_refused, dead_letter_compressed, dead_letter_without_headers, dead_letter_without_value)",
            ("kind",))
        for kind in FALLBACK_KINDS:
            self.fallbacks.labels(kind)
        self.lookup_refused = counter(
            "pg_lookup_refused", "customer_id values PostgreSQL refused to look up (answered as not found)")
        self.history_degraded = counter(
            "history_rows_degraded", "History rows the store refused whole, written without their payload")
        self.in_flight = Gauge(
            f"{PREFIX}_records_in_flight",
            "Records read from the input topic whose history row is not written yet", registry=registry)

    def track_in_flight(self, read: Callable[[], float]) -> None:
        """The in-flight gauge reads `read()` at scrape time."""
        self.in_flight.set_function(read)
