"""The periodic progress line, and the aggregated log lines flushed with it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from flows.telemetry.metrics import Metrics

log = logging.getLogger("flows.progress")


class ProgressReporter:
    """Logs one progress line every `interval` seconds from a daemon thread, and a last one
    when stopped; each time, the `flushers` first (the aggregated failure lines)."""

    def __init__(self, interval: float, metrics: Metrics, flushers: Sequence[Callable[[], None]] = ()) -> None:
        self.interval = interval
        self.metrics = metrics
        self.flushers = list(flushers)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def start(self) -> None:
        """Start the thread (once; later calls do nothing)."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.emit("progress")

    def emit(self, msg: str) -> None:
        """One line now."""
        for flush in self.flushers:
            flush()
        log.info(msg, extra={"fields": self.metrics.snapshot()})

    def stop(self) -> None:
        """Stop the thread and log the final line."""
        self._stop.set()
        if self._thread is not None:
            # runs at exit, when a host program (a test runner) may have closed the stream
            # the handler writes to: skip the line then rather than print a logging error
            logging.raiseExceptions = False
            self.emit("final progress")
