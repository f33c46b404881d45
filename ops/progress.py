"""Progress of a long scan on stderr, so stdout stays the report a script can read.

On a terminal: one line rewritten in place a few times a second. Anywhere else (a CI log,
`kubectl logs`, a file): a plain line every `interval` seconds, because carriage returns
turn such logs into one unreadable line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

TTY_INTERVAL_S = 0.2
LOG_INTERVAL_S = 10.0


class Progress:
    """Counts scanned records against an expected total and shows the rate."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        stream: TextIO | None = None,
        enabled: bool = True,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (TTY_INTERVAL_S if self.tty else LOG_INTERVAL_S)
        self._clock = clock
        self._started = clock()
        self._last = self._started
        self.done = 0
        self.note = ""
        self._shown = False

    def advance(self, n: int = 1, note: str | None = None) -> None:
        """Count `n` more records (and replace the note, if given); redrawn once per `interval`."""
        self.done += n
        if note is not None:
            self.note = note
        if self.enabled and self._clock() - self._last >= self.interval:
            self.show()

    def line(self) -> str:
        """The progress text: count, share of the total, rate, time left, and the note."""
        elapsed = max(self._clock() - self._started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.label}: {self.done:,}"
        if self.total:
            text += f"/{self.total:,} ({min(100.0, 100 * self.done / self.total):.0f}%)"
        text += f" records, {rate:,.0f}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ~{(self.total - self.done) / rate:,.0f}s left"
        if self.note:
            text += f", {self.note}"
        return text

    def show(self) -> None:
        """Write the line now: rewritten in place on a terminal, appended as a new line elsewhere."""
        self._last = self._clock()
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        """Clear the terminal line so the report starts on a clean one."""
        if self.enabled and self.tty and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
