"""The process around Bytewax's runtime: graceful shutdown and giving up on a dependency.

- Shutdown: SIGTERM or SIGINT sets the stop flag; every input partition then reports
  end-of-input, so Bytewax finishes what is in flight (outputs acknowledge everything and
  close), takes its last snapshot and returns: exit status 0. A watchdog ends the process
  with status 1 if that takes longer than `SHUTDOWN_TIMEOUT_SECONDS`; a second signal ends
  it at once (recovery then resumes from the last snapshot).
- Giving up: a dependency unavailable past `RETRY_DEADLINE_SECONDS` logs one line and exits
  with status 3, so an orchestrator restarts the process and recovery resumes.
- Before the flow starts: a process of a cluster first waits for its peers to connect, in
  Bytewax's Rust code, where Python's signal handlers do not run; a signal then still ends
  it at once (status 0: nothing was read), through a wakeup file descriptor watched by a
  thread of its own.
- A peer gone: when another process of the cluster dies, Bytewax's communication thread
  panics and the others end with a PyO3 `PanicException`; that is said in one line, not a
  traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

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
        self.started = threading.Event()  # a worker began building the flow: the cluster is connected
        self._done = threading.Event()

    def install_signal_handlers(self, timeout_s: float) -> None:
        """SIGTERM/SIGINT stop the input; a second one exits at once. Must run in the main
        thread (dataflow.py does it at import, before Bytewax starts)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._watch_signals_before_start()
        sys.excepthook = _peer_gone_hook(sys.excepthook)

        def watchdog() -> None:
            self.stopping.wait()
            if not self._done.wait(timeout_s):
                log.error("shutdown took longer than %.0fs: exiting", timeout_s)
                _flush_logs()
                os._exit(1)

        threading.Thread(target=watchdog, name="shutdown-watchdog", daemon=True).start()

    def _watch_signals_before_start(self) -> None:
        """Python runs its signal handlers only when the main thread runs Python code; while
        the cluster connects it does not. The C handler also writes the signal's number to
        a wakeup descriptor, which a thread reads: a stop signal before the flow started
        ends the process here."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

        def watch() -> None:
            while True:
                data = os.read(read_fd, 16)
                if not data:
                    return
                if self.started.is_set():
                    return  # from here on the handlers run (the main thread checks for signals)
                for signum in data:
                    if signum in (signal.SIGTERM, signal.SIGINT):
                        log.info(
                            "%s received before the flow started (waiting for the cluster's processes): exiting",
                            signal.Signals(signum).name,
                        )
                        _flush_logs()
                        os._exit(0)

        threading.Thread(target=watch, name="signals-before-start", daemon=True).start()

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


def _peer_gone_hook(default: Callable[..., object]) -> Callable[..., object]:
    """`sys.excepthook` saying in one line that the cluster broke (a peer process gone)
    instead of PyO3's `PanicException` traceback; any other exception as before."""

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> object:
        if kind.__name__ != "PanicException":
            return default(kind, exc, tb)
        log.error(
            "the Bytewax cluster stopped: another process of it is gone or unreachable (when one process of a "
            "cluster exits, the others exit too; the orchestrator restarts them and they resume): %s",
            str(exc)[:300],
            extra={"fields": {"exit_status": 1}},
        )
        _flush_logs()
        return None

    return hook
