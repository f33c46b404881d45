"""flows.telemetry.metrics: one set of counters, read by the progress line and by Prometheus
(a private registry here)."""

from __future__ import annotations

import datetime as dt

from prometheus_client import CollectorRegistry

from flows.core import outcome
from flows.core.model import Code, Failure, Stage
from flows.telemetry.metrics import FALLBACK_KINDS, Metrics

from .fakes import ALICE_MEMBER, record
from .test_outcome import decoded

NOW = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    assert got is not None, (name, labels)
    return got


def failed(code: Code):  # type: ignore[no-untyped-def]
    return outcome.failure(Failure(record(b"x"), code, Stage.DECODE, "m"), "dlq", NOW)


def test_prometheus_and_the_progress_line_read_the_same_counters() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    for code in Code:
        assert value(registry, "enrichment_records_failed_total", code=code.value) == 0
    for kind in FALLBACK_KINDS:
        assert value(registry, "enrichment_delivery_fallbacks_total", kind=kind) == 0
    m.add_input(5)
    m.add_lookups("customers", hits=2, misses=3, queries=1)
    m.observe_lookup("customers", 0.002)
    ok = outcome.success(decoded(), [ALICE_MEMBER], "out", NOW, "t")
    m.add_results([ok, ok, failed(Code.INVALID_JSON), failed(Code.CUSTOMER_NOT_FOUND), failed(Code.CUSTOMER_NOT_FOUND)])
    assert value(registry, "enrichment_records_in_total") == 5
    assert value(registry, "enrichment_records_enriched_total") == 2
    assert value(registry, "enrichment_records_failed_total", code="customer_not_found") == 2
    assert value(registry, "enrichment_records_failed_total", code="invalid_json") == 1
    assert value(registry, "enrichment_cache_hits_total", lookup="customers") == 2
    assert value(registry, "enrichment_cache_misses_total", lookup="customers") == 3
    assert value(registry, "enrichment_lookup_queries_total", lookup="customers") == 1
    assert value(registry, "enrichment_lookup_duration_seconds_count", lookup="customers") == 1
    assert value(registry, "enrichment_records_in_flight") == 5
    m.add_written("history", 4, 0.03)
    m.add_delivered(4)
    assert value(registry, "enrichment_records_in_flight") == 1
    assert value(registry, "enrichment_output_written_total", output="history") == 4
    assert value(registry, "enrichment_output_write_duration_seconds_bucket", output="history", le="0.05") == 1
    m.add_delivered(3)  # more than were read (the Lambda reads no source): never negative
    assert value(registry, "enrichment_records_in_flight") == 0
    m.add_fallbacks(["dead_letter_compressed"])
    snap = m.snapshot()
    assert (snap["records_in"], snap["enriched"], snap["failed"], snap["cache_hit_ratio"]) == (
        5,
        2,
        {"customer_not_found": 2, "invalid_json": 1},
        0.4,
    )
    assert snap["delivery_fallbacks"] == {"dead_letter_compressed": 1}


def test_counters_without_prometheus() -> None:
    m = Metrics(registry=None)
    m.add_input(3)
    m.add_delivered(2)
    m.observe_lookup("customers", 0.1)
    m.add_written("history", 2, 0.1)
    assert m.in_flight() == 1 and m.snapshot()["records_in"] == 3


def test_build_info_and_no_created_series() -> None:
    import re
    from pathlib import Path

    from prometheus_client import generate_latest

    import flows

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.observe_lookup("customers", 0.01)
    metrics.add_written("history", 5, 0.02)
    text = generate_latest(registry).decode()
    assert "_created" not in text
    info = re.search(r"^enrichment_build_info\{(.*)\} 1\.0$", text, re.MULTILINE)
    assert info is not None and f'version="{flows.__version__}"' in info.group(1)
    assert 'librdkafka="' in info.group(1) and 'python="' in info.group(1)
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert f'version = "{flows.__version__}"' in pyproject
