"""Offsets and times as operators type them, and offsets as operators read them.

Pure functions: the command-line parsing and the report formatting of every subcommand go
through here, so they test without a broker. Offset ranges are inclusive at both ends on the
command line and in reports ("3-7" is five offsets), the way people read them.
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_SPAN = re.compile(r"^(?:(\d+):)?(\d*)(-?)(\d*)$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class OffsetSpan:
    """`[P:]START-END` from the command line; `partition` None means every partition."""

    partition: int | None
    start: int | None  # inclusive; None: from the first offset kept
    end: int | None  # inclusive; None: to the end

    def __str__(self) -> str:
        where = "" if self.partition is None else f"{self.partition}:"
        lo = "" if self.start is None else str(self.start)
        hi = "" if self.end is None else str(self.end)
        return f"{where}{lo}-{hi}"


def parse_span(text: str) -> OffsetSpan:
    """`0:100-200`, `0:100-`, `0:-200`, `0:150` (one offset), or the same without `P:`."""
    match = _SPAN.match(text.strip())
    if not match or not (match.group(2) or match.group(4)):
        raise ValueError(f"{text!r} is not an offset range; expected [PARTITION:]START-END, START-, -END or OFFSET")
    part, lo, dash, hi = match.groups()
    start = int(lo) if lo else None
    end = int(hi) if hi else None
    if not dash:  # a single offset
        end = start
    if start is not None and end is not None and end < start:
        raise ValueError(f"{text!r}: the range ends before it starts")
    return OffsetSpan(int(part) if part is not None else None, start, end)


def check_spans(spans: Sequence[OffsetSpan]) -> None:
    """At most one range per partition and one for "every partition": overlapping rules
    would make "which offsets are selected" a puzzle."""
    seen: set[int | None] = set()
    for span in spans:
        if span.partition in seen:
            which = "every partition" if span.partition is None else f"partition {span.partition}"
            raise ValueError(f"--offsets given twice for {which}")
        seen.add(span.partition)


def span_for(spans: Sequence[OffsetSpan], partition: int) -> OffsetSpan | None:
    """The range that applies to `partition`: its own, else the one for every partition.
    With ranges given, a partition none of them names is left out (None)."""
    if not spans:
        return OffsetSpan(None, None, None)
    general = None
    for span in spans:
        if span.partition == partition:
            return span
        if span.partition is None:
            general = span
    return general


def window(span: OffsetSpan | None, low: int, high: int) -> tuple[int, int]:
    """The half-open offsets [start, end) to read: the span clipped to what the partition
    holds (`low` is its first kept offset, `high` the next to be written)."""
    if span is None:
        return (high, high)
    start = low if span.start is None else max(low, span.start)
    end = high if span.end is None else min(high, span.end + 1)
    return (start, max(start, end))


def to_ranges(offsets: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged inclusive ranges of the given offsets (any order, repeats allowed)."""
    out: list[tuple[int, int]] = []
    for off in sorted(set(offsets)):
        if out and out[-1][1] == off - 1:
            out[-1] = (out[-1][0], off)
        else:
            out.append((off, off))
    return out


def format_ranges(ranges: Iterable[tuple[int, int]]) -> str:
    """`0-4, 7, 9-12`: what an operator pastes into `--offsets` or a ticket."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def format_offsets(offsets: Iterable[int]) -> str:
    """Offsets in any order as merged ranges (`0-4, 7, 9-12`), the way reports list them."""
    return format_ranges(to_ranges(offsets))


class RangeSet:
    """A set of offsets stored as sorted, merged inclusive ranges: compact when offsets
    come in runs, which is how replayed dead letters and missing records usually come."""

    def __init__(self, ranges: Iterable[Sequence[int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for lo, hi in sorted((int(r[0]), int(r[1])) for r in ranges):
            if self._ends and lo <= self._ends[-1] + 1:
                self._ends[-1] = max(self._ends[-1], hi)
            else:
                self._starts.append(lo)
                self._ends.append(hi)

    def __contains__(self, offset: object) -> bool:
        if not isinstance(offset, int):
            return False
        i = bisect.bisect_right(self._starts, offset) - 1
        return i >= 0 and offset <= self._ends[i]

    def __len__(self) -> int:
        return sum(b - a + 1 for a, b in zip(self._starts, self._ends, strict=True))

    def __bool__(self) -> bool:
        return bool(self._starts)

    def add(self, offset: int) -> None:
        """Add one offset, joining it to the ranges on either side."""
        starts, ends = self._starts, self._ends
        i = bisect.bisect_right(starts, offset) - 1
        if i >= 0 and offset <= ends[i]:
            return
        left = i >= 0 and ends[i] == offset - 1
        right = i + 1 < len(starts) and starts[i + 1] == offset + 1
        if left and right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif left:
            ends[i] = offset
        elif right:
            starts[i + 1] = offset
        else:
            starts.insert(i + 1, offset)
            ends.insert(i + 1, offset)

    def update(self, other: RangeSet) -> None:
        """Add every offset of `other`."""
        merged = RangeSet(self.ranges() + other.ranges())
        self._starts, self._ends = merged._starts, merged._ends

    def ranges(self) -> list[tuple[int, int]]:
        """The merged inclusive ranges, sorted: what the replay state document stores."""
        return list(zip(self._starts, self._ends, strict=True))


def parse_time(text: str, now: dt.datetime) -> int:
    """A moment in epoch milliseconds from an RFC 3339 time with offset (`2026-01-01T10:00:00Z`),
    a date (midnight UTC), a duration back from `now` (`90s`, `15m`, `2h`, `3d`) or epoch ms.
    A time without an offset is refused: on-call engineers and brokers rarely share a zone."""
    raw = text.strip()
    if raw.isdigit():
        return int(raw)
    duration = _DURATION.match(raw)
    if duration:
        seconds = float(duration.group(1)) * _UNIT_S[duration.group(2)]
        return int((now - dt.timedelta(seconds=seconds)).timestamp() * 1000)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        moment = dt.datetime.fromisoformat(raw).replace(tzinfo=dt.UTC)
    else:
        try:
            moment = dt.datetime.fromisoformat(raw)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a time; expected RFC 3339 like 2026-01-01T10:00:00Z, a date, "
                "a duration like 2h, or epoch milliseconds"
            ) from None
        if moment.tzinfo is None:
            raise ValueError(f"{text!r} has no UTC offset; add Z or +HH:MM")
    return int(moment.timestamp() * 1000)


def format_ms(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC, the way the pipeline writes `failed_at`."""
    moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
