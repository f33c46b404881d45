"""Exit statuses of `python -m ops` and the error that carries one.

Statuses are part of the command's interface (scripts and runbooks test them), so they live
in one place and docs/ops-tools.md lists the same table.
"""

from __future__ import annotations

from flows.errors import EnrichmentError

OK = 0
FOUND_GAPS = 1  # reconcile: input records without output; trace: nothing (or not all) found
USAGE = 2  # bad arguments or settings, unreachable dependency or missing topic at start, refusal
FAILED = 3  # failed part-way (delivery not acknowledged, Kafka error); a replay keeps its position
INTERRUPTED = 130  # SIGINT/SIGTERM; a replay stops after its current chunk and keeps its position


class OpsError(EnrichmentError):
    """A failure to report as one line on stderr, with the exit status it maps to."""

    def __init__(self, message: str, status: int = USAGE) -> None:
        super().__init__(message)
        self.status = status
