"""flows.stats feeds the Prometheus collectors of flows.metrics (a private registry here)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from flows.metrics import PipelineMetrics
from flows.model import Code
from flows.stats import Stats


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    assert got is not None, name
    return got


class Result:
    """What Stats.add_results reads of a routed result."""

    def __init__(self, code: str | None) -> None:
        self.ok = code is None
        self.history = type("H", (), {"error_code": code})()


def test_stats_update_the_metrics() -> None:
    registry = CollectorRegistry()
    stats = Stats(PipelineMetrics(registry))
    for code in Code:
        assert value(registry, "enrichment_records_failed_total", code=code.value) == 0
    stats.add_input(5)
    stats.add_lookups(hits=2, misses=3, queries=1)
    stats.observe_lookup(0.002)
    stats.add_results([Result(None), Result(None), Result("invalid_json"), Result("customer_not_found"),
                       Result("customer_not_found")])  # type: ignore[list-item]
    assert value(registry, "enrichment_records_in_total") == 5
    assert value(registry, "enrichment_records_enriched_total") == 2
    assert value(registry, "enrichment_records_failed_total", code="customer_not_found") == 2
    assert value(registry, "enrichment_records_failed_total", code="invalid_json") == 1
    assert value(registry, "enrichment_cache_hits_total") == 2
    assert value(registry, "enrichment_cache_misses_total") == 3
    assert value(registry, "enrichment_pg_lookup_duration_seconds_count") == 1
    assert value(registry, "enrichment_records_in_flight") == 5
    stats.add_history(4, 0.03)
    assert value(registry, "enrichment_records_in_flight") == 1
    assert value(registry, "enrichment_history_rows_written_total") == 4
    assert value(registry, "enrichment_history_write_duration_seconds_bucket", le="0.05") == 1
    stats.add_history(3, 0.01)  # more rows than records read (the Lambda): never negative
    assert value(registry, "enrichment_records_in_flight") == 0


def test_stats_without_metrics_still_count() -> None:
    stats = Stats()
    stats.add_input(3)
    stats.add_history(2, 0.1)
    stats.observe_lookup(0.1)
    assert stats.in_flight() == 1 and stats.snapshot()["records_in"] == 3
