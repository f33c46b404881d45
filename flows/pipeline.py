"""The topology, built from its parts so tests can swap the source, sinks and lookup:

    kafka_in -> decode_validate -> enrich -> history          (every record)
                                          -> route -> kafka_out  (enriched)
                                                   -> kafka_dlq  (failed)
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from flows.decode import decode_record
from flows.enrich import CustomerCache, CustomerLookup, Enricher
from flows.model import Decoded, Failure, Routed, SourceRecord
from flows.route import internal_error
from flows.settings import Settings
from flows.stats import ProgressReporter

log = logging.getLogger(__name__)
T = TypeVar("T")


class PerWorker(Generic[T]):
    """One instance per worker thread, built on the worker's first batch (never at import)
    and closed at process exit. Bytewax has no open/close hook for map-like steps."""

    def __init__(self, build: Callable[[], T], close: Callable[[T], None]) -> None:
        self._build = build
        self._close = close
        self._local = threading.local()
        self._all: list[T] = []
        self._lock = threading.Lock()
        atexit.register(self.close_all)

    def get(self) -> T:
        inst: T | None = getattr(self._local, "inst", None)
        if inst is None:
            inst = self._build()
            self._local.inst = inst
            with self._lock:
                self._all.append(inst)
        return inst

    def close_all(self) -> None:
        with self._lock:
            instances, self._all = self._all, []
        for inst in instances:
            try:
                self._close(inst)
            except Exception:  # noqa: BLE001 - closing is best effort at exit
                log.exception("close failed")


def decode_batch(records: list[SourceRecord], max_bytes: int) -> list[Decoded | Failure]:
    out: list[Decoded | Failure] = []
    for record in records:
        try:
            out.append(decode_record(record, max_bytes))
        except Exception as exc:  # noqa: BLE001 - decode_record never raises; the net under a bug
            log.exception("internal error decoding %s", record.coordinates)
            out.append(internal_error(record, exc))
    return out


def make_enricher(settings: Settings, lookup_factory: Callable[[], CustomerLookup]) -> PerWorker[Enricher]:
    reporter = ProgressReporter(settings.progress_interval_seconds)
    atexit.register(reporter.stop)

    def build() -> Enricher:
        reporter.start()
        cache = CustomerCache(settings.cache_ttl_seconds, settings.cache_negative_ttl_seconds,
                              settings.cache_max_size)
        return Enricher(lookup_factory(), cache, settings.output_topic, settings.failure_topic,
                        settings.lookup_batch_size)

    return PerWorker(build, lambda e: e.lookup.close())


def log_failures(results: list[Routed]) -> None:
    for r in results:
        if not r.ok:
            h = r.history
            log.warning("record failed", extra={"fields": {
                "code": h.error_code, "topic": h.source_topic, "partition": h.source_partition,
                "offset": h.source_offset,
                "event_id": None if h.event_id == f"{h.source_topic}:{h.source_partition}:{h.source_offset}"
                else h.event_id}})


def process(records: list[SourceRecord], enricher: Enricher, max_bytes: int) -> list[Routed]:
    """decode_validate then enrich, for callers outside Bytewax (the Lambda handler): the
    same code the dataflow's two steps run."""
    results = enricher.process(decode_batch(records, max_bytes))
    log_failures(results)
    return results


def build_flow(
    settings: Settings,
    source: Source[SourceRecord],
    success_sink: Sink[Routed],
    failure_sink: Sink[Routed],
    history_sink: Sink[Routed],
    lookup_factory: Callable[[], CustomerLookup],
    flow_id: str = "enrichment",
) -> Dataflow:
    enrichers = make_enricher(settings, lookup_factory)
    max_bytes = settings.max_value_bytes

    def decode_step(records: list[SourceRecord]) -> list[Decoded | Failure]:
        return decode_batch(records, max_bytes)

    def enrich_step(items: list[Decoded | Failure]) -> list[Routed]:
        results = enrichers.get().process(items)
        log_failures(results)
        return results

    flow = Dataflow(flow_id)
    records = op.input("kafka_in", flow, source)
    decoded = op.flat_map_batch("decode_validate", records, decode_step)
    results = op.flat_map_batch("enrich", decoded, enrich_step)
    op.output("history", results, history_sink)
    routed = op.branch("route", results, lambda r: r.ok)
    op.output("kafka_out", routed.trues, success_sink)
    op.output("kafka_dlq", routed.falses, failure_sink)
    return flow
