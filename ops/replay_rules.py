"""The pure rules of `ops replay`: which dead letters a run selects, what a replayed record
looks like, and which targets are refused. No client library here, so they test without a
broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from flows.core.model import Code, Headers
from flows.core.outcome import RESERVED_HEADERS
from flows.settings import Settings
from ops.errors import OpsError
from ops.ranges import OffsetSpan, span_for

REPLAY_HEADER = "replay.of"
NO_CODE = "(none)"
CODES = tuple(c.value for c in Code)
# what the pipeline puts on every message it writes: enriched events and dead letters carry
# their input's coordinates, dead letters also their reason
OUTPUT_MARKS = (("source.topic", "source.partition", "source.offset"), ("error.code",))


@dataclass(frozen=True)
class Selection:
    """Which dead letters to replay; an empty field selects everything."""

    codes: frozenset[str] = frozenset()
    since_ms: int | None = None  # inclusive
    until_ms: int | None = None  # exclusive
    spans: tuple[OffsetSpan, ...] = ()

    def matches(self, partition: int, offset: int, timestamp_ms: int, code: str) -> bool:
        """Whether the dead letter at `partition`/`offset`, written at `timestamp_ms` with `code`,
        is selected."""
        if self.codes and code not in self.codes:
            return False
        if self.since_ms is not None and timestamp_ms < self.since_ms:
            return False
        if self.until_ms is not None and timestamp_ms >= self.until_ms:
            return False
        span = span_for(self.spans, partition)
        if span is None:
            return False
        return (span.start is None or offset >= span.start) and (span.end is None or offset <= span.end)


def parse_codes(values: list[str]) -> frozenset[str]:
    """`--code a --code b,c`; unknown codes are refused (a typo would select nothing)."""
    codes = {c.strip() for v in values for c in v.split(",") if c.strip()}
    unknown = sorted(codes - set(CODES))
    if unknown:
        raise ValueError(f"unknown error code {', '.join(map(repr, unknown))}; one of {', '.join(CODES)}")
    return frozenset(codes)


def replay_headers(headers: Sequence[tuple[str, bytes | None]] | None, replay_of: str) -> Headers:
    """The input headers again (null values stay null), marked as a replay."""
    kept = [(k, v) for k, v in headers or [] if k not in RESERVED_HEADERS and k != REPLAY_HEADER]
    # Headers says bytes; the producer takes None too, and a null header must stay null
    return cast(Headers, [*kept, (REPLAY_HEADER, replay_of.encode())])


def parse_replay_of(text: str | None) -> tuple[str, int, int] | None:
    """`topic:partition:offset` (topic names cannot contain ':'), or None."""
    if not text:
        return None
    parts = text.rsplit(":", 2)
    if len(parts) != 3:
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except ValueError:
        return None


def output_marks(headers: Sequence[tuple[str, bytes | None]]) -> str | None:
    """The pipeline's output headers this record carries (`source.topic + source.partition
    + source.offset`, `error.code`), or None. A replay (`replay.of`) is input again: its
    marks don't count (a replay drops them anyway)."""
    names = {k for k, _ in headers}
    if REPLAY_HEADER in names:
        return None
    found = [" + ".join(mark) for mark in OUTPUT_MARKS if names.issuperset(mark)]
    return " and ".join(found) or None


def refuse_target(target: str, settings: Settings) -> None:
    """By name: the failure topic, and the topics the settings name as outputs (what the
    target holds is checked too: `ops.replay_target`)."""
    if target == settings.failure_topic:
        raise OpsError(
            f"refusing to replay into the failure topic {target}: dead letters would only be "
            "copied, never processed; replay into the input topic (the default) or --to another topic"
        )
    if target == settings.output_topic:
        raise OpsError(
            f"refusing to replay into the output topic {target}: it holds enriched events, "
            "and dead letters are raw input"
        )
