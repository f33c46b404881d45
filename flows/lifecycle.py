"""Process lifecycle around Bytewax's runtime: the recovery directory, graceful shutdown,
and giving up on a dependency.

- Recovery: when the run command names a recovery directory (`-r DIR` or
  `BYTEWAX_RECOVERY_DIRECTORY`) that holds no partitions yet, it is created and initialized
  with `RECOVERY_PARTITIONS` partitions, under a file lock so processes starting together
  don't race.
- Shutdown: SIGTERM or SIGINT sets `STOPPING`; every input partition then reports
  end-of-input, so Bytewax finishes what is in flight (sinks acknowledge everything and
  close), takes its last snapshot and returns: exit status 0. A watchdog ends the process
  with status 1 if that takes longer than `SHUTDOWN_TIMEOUT_SECONDS`; a second signal ends
  it at once (recovery then resumes from the last snapshot).
- Giving up: a dependency unavailable past `RETRY_DEADLINE_SECONDS` logs one line and exits
  with status 3, so an orchestrator restarts the process and recovery resumes.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

STOPPING = threading.Event()
EXIT_DEPENDENCY_UNAVAILABLE = 3


def recovery_dir_from(argv: Sequence[str], env: Mapping[str, str]) -> Path | None:
    """The recovery directory `python -m bytewax.run` was given, if any."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-r", "--recovery-directory", default=env.get("BYTEWAX_RECOVERY_DIRECTORY"))
    known, _ = parser.parse_known_args(list(argv))
    return Path(known.recovery_directory) if known.recovery_directory else None


def ensure_recovery_dir(path: Path, partitions: int) -> bool:
    """Create and initialize `path` when it holds no recovery partitions; True if it did."""
    from bytewax.recovery import init_db_dir

    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if any(path.glob("part-*.sqlite3")):
            return False
        init_db_dir(path, partitions)  # type: ignore[no-untyped-call]
        log.info("initialized recovery directory", extra={"fields": {"path": str(path), "partitions": partitions}})
        return True


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if STOPPING.is_set():
        log.warning("second %s: exiting now; recovery resumes from the last snapshot", name)
        _flush_logs()
        os._exit(1)
    log.info("%s received: stopping input, finishing in-flight records", name)
    STOPPING.set()


def install_signal_handlers(timeout_s: float) -> None:
    """Must run in the main thread (dataflow.py does it at import, before Bytewax starts)."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    def watchdog() -> None:
        STOPPING.wait()
        if not _done.wait(timeout_s):
            log.error("shutdown took longer than %.0fs: exiting", timeout_s)
            _flush_logs()
            os._exit(1)

    threading.Thread(target=watchdog, name="shutdown-watchdog", daemon=True).start()


_done = threading.Event()


def mark_done() -> None:
    _done.set()


def give_up(exc: BaseException) -> None:
    """Used as `flows.retry` give-up hook in the dataflow process."""
    log.error("dependency unavailable, exiting for a restart: %s", exc,
              extra={"fields": {"exit_status": EXIT_DEPENDENCY_UNAVAILABLE}})
    _flush_logs()
    os._exit(EXIT_DEPENDENCY_UNAVAILABLE)
