"""The start-up checks in the dataflow: run once per process by whichever part needs their
answer first (the source listing partitions, a worker building its steps: Bytewax does not
say in which order), the others waiting for it and sharing it. A failure is one log line
and exit status 2, before any record is read."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

from flows.app.preflight import Checked, dataflow_checks
from flows.core.sizes import TopicLimits
from flows.errors import PreflightError
from flows.settings import Settings

log = logging.getLogger("flows.preflight")


def checked(settings: Settings, exit: Callable[[int], None] = os._exit) -> Checked:
    """The checks, or one error line and exit status 2."""
    try:
        return dataflow_checks(settings)
    except PreflightError as exc:
        log.error("start-up check failed: %s", exc, extra={"fields": {"exit_status": 2}})
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        # os._exit: we are inside Bytewax's runtime, which would turn an exception into a
        # panic with a traceback and status 1; nothing has been opened yet
        exit(2)
        raise


class Preflight:
    """`checked`, once per process."""

    def __init__(
        self,
        settings: Settings,
        run: Callable[[Settings], Checked] = checked,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._run = run
        self._on_start = on_start  # told when a worker first asks: the cluster is connected
        self._lock = threading.Lock()
        self._answer: Checked | None = None

    def result(self) -> Checked:
        """The checks' answer (running them on the first call)."""
        if self._on_start is not None:
            self._on_start()
        with self._lock:
            if self._answer is None:
                self._answer = self._run(self._settings)
            return self._answer

    def partitions(self) -> list[int]:
        """The input topic's partitions."""
        return list(self.result().partitions)

    def limits(self) -> TopicLimits:
        """The output topics' size limits."""
        return self.result().limits
