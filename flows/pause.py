"""Noticing that this whole process was paused (SIGSTOP, a frozen VM or container, a long
stall of the machine): a thread ticks and records every gap between its ticks longer than
a threshold. Exactly-once mode asks it before writing: a process paused past its consumer
group's session timeout may have been replaced (a zombie), and whatever it read before the
pause belongs to another member now; writing it, history rows included, would overwrite
the heir's. The monotonic clock runs on while the process is stopped, so the gap shows."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

TICK_S = 0.2


class PauseWatch:
    """Records pauses of the process longer than `threshold_s` (gaps between ticks)."""

    def __init__(self, threshold_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold_s = threshold_s
        self._clock = clock
        self._last_tick = clock()
        self._resumed_at: float | None = None  # when the last long pause ended
        self._paused_s = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> PauseWatch:
        """Tick on a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pause-watch", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            time.sleep(TICK_S)
            self.tick()

    def tick(self) -> None:
        """One tick: a gap since the last one longer than the threshold is a pause."""
        now = self._clock()
        with self._lock:
            gap = now - self._last_tick
            self._last_tick = now
            if gap > self.threshold_s:
                self._resumed_at, self._paused_s = now, gap

    def paused_since(self, moment: float) -> float | None:
        """How long the process was paused, if a pause ended after `moment` (None: none)."""
        self.tick()
        with self._lock:
            if self._resumed_at is not None and self._resumed_at > moment:
                return self._paused_s
            return None

    def now(self) -> float:
        """The watch's clock."""
        return self._clock()
