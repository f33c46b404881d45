"""A value per worker thread. Not `threading.local`: Bytewax's worker threads are started
by its Rust runtime, and such a thread gets a fresh Python thread state, and with it fresh
`threading.local` data, each time it takes the GIL (measured: a `threading.local` set in
a step was gone at the next batch, 1,000 batches made 1,000 instances; tests/unit/
test_flow.py). The thread's identifier lasts as long as the thread, which for a worker is
the whole run."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class ByThread(Generic[T]):
    """One value per thread, by the thread's identifier."""

    def __init__(self) -> None:
        self._values: dict[int, T] = {}

    def get(self) -> T | None:
        """This thread's value (None: not set)."""
        return self._values.get(threading.get_ident())

    def set(self, value: T) -> None:
        """Set this thread's value."""
        self._values[threading.get_ident()] = value
