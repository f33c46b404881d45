"""The process around Bytewax's runtime: graceful shutdown and giving up on a dependency.

- Shutdown: SIGTERM or SIGINT sets the stop flag; every input partition then reports
  end-of-input, so Bytewax finishes what is in flight (outputs acknowledge everything and
  close), takes its last snapshot and returns: exit status 0. A watchdog ends the process
  with status 1 if that takes longer than `SHUTDOWN_TIMEOUT_SECONDS`; a second signal ends
  it at once (recovery then resumes from the last snapshot).
- Giving up: a dependency unavailable past `RETRY_DEADLINE_SECONDS` logs one line and exits
  with status 3, so an orchestrator restarts the process and recovery resumes.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

log = logging.getLogger(__name__)

EXIT_DEPENDENCY_UNAVAILABLE = 3


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()


class Lifecycle:
    """The process around Bytewax's runtime: a stop flag the input partitions watch, the
    signal handlers that set it, the watchdog that bounds a graceful shutdown, and the
    give-up hook of the retry policy (log one line, exit with status 3)."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._done = threading.Event()

    def install_signal_handlers(self, timeout_s: float) -> None:
        """SIGTERM/SIGINT stop the input; a second one exits at once. Must run in the main
        thread (dataflow.py does it at import, before Bytewax starts)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

        def watchdog() -> None:
            self.stopping.wait()
            if not self._done.wait(timeout_s):
                log.error("shutdown took longer than %.0fs: exiting", timeout_s)
                _flush_logs()
                os._exit(1)

        threading.Thread(target=watchdog, name="shutdown-watchdog", daemon=True).start()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stopping.is_set():
            log.warning("second %s: exiting now; recovery resumes from the last snapshot", name)
            _flush_logs()
            os._exit(1)
        log.info("%s received: stopping input, finishing in-flight records", name)
        self.stopping.set()

    def mark_done(self) -> None:
        """The dataflow returned: the watchdog has nothing to wait for."""
        self._done.set()

    @staticmethod
    def give_up(exc: BaseException) -> None:
        """The retry policy's give-up hook in the dataflow process: one line, exit status 3,
        so the orchestrator restarts the process and recovery resumes."""
        log.error(
            "dependency unavailable, exiting for a restart: %s",
            exc,
            extra={"fields": {"exit_status": EXIT_DEPENDENCY_UNAVAILABLE}},
        )
        _flush_logs()
        os._exit(EXIT_DEPENDENCY_UNAVAILABLE)
