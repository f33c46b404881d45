"""The topology, built from its parts so tests can swap the source, sink and lookup:

    kafka_in -> decode_validate -> enrich -> deliver   (history row, then the message to the
                                                        output or the failure topic)
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
from flows.failurelog import FailureLog
from flows.model import Decoded, Failure, Routed, SourceRecord
from flows.route import internal_error
from flows.settings import Settings
from flows.sizes import TopicLimits
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


def make_enricher(settings: Settings, lookup_factory: Callable[[], CustomerLookup],
                  limits: Callable[[], TopicLimits | None] = lambda: None, failures: FailureLog | None = None,
                  reporter: ProgressReporter | None = None) -> PerWorker[Enricher]:
    if reporter is not None:
        atexit.register(reporter.stop)

    def build() -> Enricher:
        if reporter is not None:
            reporter.start()
        cache = CustomerCache(settings.cache_ttl_seconds, settings.cache_negative_ttl_seconds,
                              settings.cache_max_size, settings.cache_negative_max_size)
        return Enricher(lookup_factory(), cache, settings.output_topic, settings.failure_topic,
                        settings.lookup_batch_size, limits=limits(), failures=failures)

    return PerWorker(build, lambda e: e.lookup.close())


def process(records: list[SourceRecord], enricher: Enricher, max_bytes: int) -> list[Routed]:
    """decode_validate then enrich, for callers outside Bytewax (the Lambda handler): the
    same code the dataflow's two steps run."""
    return enricher.process(decode_batch(records, max_bytes))


def build_flow(
    settings: Settings,
    source: Source[SourceRecord],
    sink: Sink[Routed],
    lookup_factory: Callable[[], CustomerLookup],
    limits: Callable[[], TopicLimits | None] = lambda: None,
    failures: FailureLog | None = None,
    reporter: ProgressReporter | None = None,
    flow_id: str = "enrichment",
) -> Dataflow:
    enrichers = make_enricher(settings, lookup_factory, limits, failures, reporter)
    max_bytes = settings.max_value_bytes

    def decode_step(records: list[SourceRecord]) -> list[Decoded | Failure]:
        return decode_batch(records, max_bytes)

    def enrich_step(items: list[Decoded | Failure]) -> list[Routed]:
        return enrichers.get().process(items)

    flow = Dataflow(flow_id)
    records = op.input("kafka_in", flow, source)
    decoded = op.flat_map_batch("decode_validate", records, decode_step)
    results = op.flat_map_batch("enrich", decoded, enrich_step)
    op.output("deliver", results, sink)
    return flow
