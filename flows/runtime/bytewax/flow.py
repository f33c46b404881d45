"""The topology (`python -m bytewax.visualize dataflow` draws it):

    kafka_in -> decode_validate -> enrich -> deliver  (every output: the history row, the
                                                       message to the output or failure topic)

Built from its parts so tests can pass a TestingSource, a TestingSink and fake lookups.
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

from flows.app.compose import App
from flows.core.enrich import Enricher, close_lookups
from flows.core.model import Decoded, Failure, Outcome, SourceRecord
from flows.runtime.bytewax.threads import ByThread
from flows.telemetry.progress import ProgressReporter

log = logging.getLogger(__name__)
T = TypeVar("T")


class PerWorker(Generic[T]):
    """One instance per worker thread, built on the worker's first batch (never at import)
    and closed at process exit. Bytewax has no open/close hook for map-like steps."""

    def __init__(self, build: Callable[[], T], close: Callable[[T], None]) -> None:
        self._build = build
        self._close = close
        self._by_thread: ByThread[T] = ByThread()
        self._all: list[T] = []
        self._lock = threading.Lock()
        atexit.register(self.close_all)

    def get(self) -> T:
        """This worker's instance."""
        inst = self._by_thread.get()
        if inst is None:
            inst = self._build()
            self._by_thread.set(inst)
            with self._lock:
                self._all.append(inst)
        return inst

    def close_all(self) -> None:
        """Close every worker's instance (at exit)."""
        with self._lock:
            instances, self._all = self._all, []
        for inst in instances:
            try:
                self._close(inst)
            except Exception:  # noqa: BLE001 - closing is best effort at exit
                log.exception("close failed")


def build_flow(
    app: App,
    source: Source[SourceRecord],
    sink: Sink[Outcome],
    enricher: Callable[[], Enricher],
    reporter: ProgressReporter | None = None,
    flow_id: str = "enrichment",
) -> Dataflow:
    """The dataflow: `enricher` builds a worker's enrich step, `sink` delivers outcomes."""
    enrichers = PerWorker(enricher, close_lookups)
    if reporter is not None:
        atexit.register(reporter.stop)

    def decode_step(records: list[SourceRecord]) -> list[Decoded | Failure]:
        return app.decode(records)

    def enrich_step(items: list[Decoded | Failure]) -> list[Outcome]:
        if reporter is not None:
            reporter.start()
        return app.enrich(items, enrichers.get())

    flow = Dataflow(flow_id)
    records = op.input("kafka_in", flow, source)
    decoded = op.flat_map_batch("decode_validate", records, decode_step)
    outcomes = op.flat_map_batch("enrich", decoded, enrich_step)
    op.output("deliver", outcomes, sink)
    return flow
