"""Failed records in the logs, aggregated: an upstream schema break must not flood them.

Per interval (the progress interval) and per failure code: the first failure is logged at
once as a `record failed` line (so a new kind of failure shows without delay), the others
are counted, and one `records failed` line at the end of the interval gives the counts by
code with a few examples of each. That is at most one line per code plus one per interval,
whatever the failure rate. Lines carry coordinates and ids, never payloads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from flows.core.model import Outcome

log = logging.getLogger("flows.failures")

EXAMPLES_PER_CODE = 3


def _fields(r: Outcome) -> dict[str, Any]:
    h = r.history
    coordinates = f"{h.source_topic}:{h.source_partition}:{h.source_offset}"
    return {
        "topic": h.source_topic,
        "partition": h.source_partition,
        "offset": h.source_offset,
        "event_id": None if h.event_id == coordinates else h.event_id,
    }


class FailureLog:
    """Thread-safe: the workers of a process share one."""

    def __init__(
        self,
        examples_per_code: int = EXAMPLES_PER_CODE,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
        first: str = "record failed",
        summary: str = "records failed",
        level: int = logging.WARNING,
    ) -> None:
        self.examples_per_code = examples_per_code
        self._first, self._summary, self._level = first, summary, level
        self._clock = clock
        self._log = logger
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._examples: dict[str, list[dict[str, Any]]] = {}
        self._since = clock()

    def add(self, results: Iterable[Outcome]) -> None:
        """Count the failed outcomes of a batch."""
        self.note((r.history.error_code or "unknown", r) for r in results if not r.ok)

    def note(self, events: Iterable[tuple[str, Outcome]]) -> None:
        """Count each (code, record); log the interval's first of each code at once."""
        first: list[tuple[str, dict[str, Any]]] = []
        with self._lock:
            for code, r in events:
                self._counts[code] += 1
                examples = self._examples.setdefault(code, [])
                if self._counts[code] == 1:
                    first.append((code, _fields(r)))
                elif len(examples) < self.examples_per_code:
                    examples.append(_fields(r))
        for code, fields in first:  # logged outside the lock
            self._log.log(self._level, self._first, extra={"fields": {"code": code, **fields}})

    def flush(self) -> None:
        """The interval's `records failed` line, if any record failed in it."""
        with self._lock:
            counts, examples = self._counts, self._examples
            self._counts, self._examples = Counter(), {}
            now, since = self._clock(), self._since
            self._since = now
        if not counts:
            return
        self._log.log(
            self._level,
            self._summary,
            extra={
                "fields": {
                    "interval_s": round(now - since, 3),
                    "failed_total": sum(counts.values()),
                    "failed": dict(sorted(counts.items())),
                    "examples": {code: found for code, found in sorted(examples.items()) if found},
                }
            },
        )
