"""What a replay has already produced into one target topic: the document every run reads
at start and writes after each chunk, so that no dead letter is produced twice there.

Why "which dead letters were replayed" and not a position: a replay selects records (by
code, time, offsets), so a position only means "everything before it was looked at under
that selection"; a later run with another selection would skip records it never replayed,
or replay records again. The replayed offsets, kept as merged ranges per partition, stay
small (dead letters of one cause come in runs) and hold for any selection.

Each chunk goes through the document write-ahead:

1. the chunk is recorded as pending, with the time;
2. it is produced, and every message must be acknowledged (idempotent producer);
3. it moves to `replayed` and pending is cleared.

A run that finds a pending chunk (a run killed between 1 and 3) looks in the target topic,
from just before the pending time, for records whose `replay.of` header names those dead
letters: found ones count as replayed, the others are produced again.

The document lives in the history keyspace, where every operator's run sees it
(`ops.replay_store`); this module is the document alone, plus the state files of earlier
versions (one per cluster and topics under `.ops-state/`), read once to import them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.errors import USAGE, OpsError
from ops.ranges import RangeSet

VERSION = 1
# records of the pending chunk were produced after this much before the pending time
# (the producer's clock, or the broker's with LogAppendTime, may lag the machine's)
PENDING_MARGIN_MS = 60_000
LEGACY_DIR = Path(".ops-state")


def legacy_path(directory: Path, cluster: str, failure_topic: str, target_topic: str) -> Path:
    """Where earlier versions kept the document: a readable name plus a digest that tells
    clusters (and ambiguous names) apart."""
    digest = hashlib.sha256(f"{cluster}\0{failure_topic}\0{target_topic}".encode()).hexdigest()[:10]
    return directory / f"replay.{failure_topic}.to.{target_topic}.{digest}.json"


@dataclass
class Pending:
    """The chunk in flight: its offsets per partition, and a time before any of them was produced
    (where settling starts reading the target)."""

    since_ms: int
    offsets: dict[int, RangeSet]

    def __len__(self) -> int:
        return sum(len(r) for r in self.offsets.values())


def _no_save(_state: ReplayState) -> None:
    return None


@dataclass
class ReplayState:
    """The document of one cluster, failure topic and target topic: the offsets replayed per
    partition and the chunk in flight; `save` writes it after every change."""

    cluster: str
    failure_topic: str
    failure_topic_id: str
    target_topic: str
    replayed: dict[int, RangeSet] = field(default_factory=dict)
    pending: Pending | None = None
    # writes the document where it lives; called after every change
    save: Callable[[ReplayState], None] = field(default=_no_save, repr=False, compare=False)

    @classmethod
    def from_json(
        cls,
        text: str,
        where: str,
        cluster: str,
        failure_topic: str,
        failure_topic_id: str,
        target_topic: str,
        hint: str,
    ) -> ReplayState:
        """The document `text` read from `where`; refused (status 2, with `hint`) when it
        can't be read or belongs to an earlier topic of the same name."""
        state = cls(cluster, failure_topic, failure_topic_id, target_topic)
        try:
            doc = json.loads(text)
            if doc.get("version") != VERSION:
                raise ValueError(f"version {doc.get('version')!r}, expected {VERSION}")
            recorded_id = doc["failure_topic_id"]
            state.replayed = _partitions(doc["replayed"])
            pending = doc.get("pending")
            if pending:
                state.pending = Pending(int(pending["since_ms"]), _partitions(pending["offsets"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise OpsError(f"{where} is unreadable ({exc}); {hint}", USAGE) from None
        if recorded_id != failure_topic_id:
            raise OpsError(
                f"{where} belongs to an earlier topic named {failure_topic} (topic id {recorded_id}, "
                f"now {failure_topic_id}); its offsets name other records: {hint}",
                USAGE,
            )
        return state

    def is_replayed(self, partition: int, offset: int) -> bool:
        """Whether this dead letter is recorded as replayed (one in the pending chunk is not)."""
        done = self.replayed.get(partition)
        return done is not None and offset in done

    def count(self) -> int:
        """How many dead letters are recorded as replayed."""
        return sum(len(r) for r in self.replayed.values())

    def merge(self, other: ReplayState) -> None:
        """Add what `other` records (replayed, and any chunk it left in flight): both say
        what was produced into the same target, so their union is never too little."""
        for p, done in other.replayed.items():
            self.replayed.setdefault(p, RangeSet()).update(done)
        if other.pending is not None:
            if self.pending is None:
                self.pending = Pending(other.pending.since_ms, {})
            self.pending.since_ms = min(self.pending.since_ms, other.pending.since_ms)
            for p, offsets in other.pending.offsets.items():
                self.pending.offsets.setdefault(p, RangeSet()).update(offsets)

    def begin(self, coordinates: Iterable[tuple[int, int]], now_ms: int) -> None:
        """Record the chunk about to be produced as pending (step 1) and save; its time is set
        `PENDING_MARGIN_MS` before `now_ms`, for clocks that lag."""
        offsets: dict[int, RangeSet] = {}
        for p, o in coordinates:
            offsets.setdefault(p, RangeSet()).add(o)
        self.pending = Pending(now_ms - PENDING_MARGIN_MS, offsets)
        self.save(self)

    def commit(self, found: Iterable[tuple[int, int]] | None = None) -> None:
        """Mark the pending chunk replayed (or, settling a chunk left by a killed run, only
        the records `found` in the target topic), and clear it."""
        if self.pending is None:
            return
        if found is None:
            for p, done in self.pending.offsets.items():
                self.replayed.setdefault(p, RangeSet()).update(done)
        else:
            for p, o in found:
                if p in self.pending.offsets and o in self.pending.offsets[p]:
                    self.replayed.setdefault(p, RangeSet()).add(o)
        self.pending = None
        self.save(self)

    def to_json(self) -> dict[str, Any]:
        """The document as a JSON object; `updated_at` and `replayed_count` are for people reading it
        and are not read back."""
        return {
            "version": VERSION,
            "cluster_id": self.cluster,
            "failure_topic": self.failure_topic,
            "failure_topic_id": self.failure_topic_id,
            "target_topic": self.target_topic,
            "updated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "replayed_count": self.count(),
            "replayed": {str(p): r.ranges() for p, r in sorted(self.replayed.items())},
            "pending": None
            if self.pending is None
            else {
                "since_ms": self.pending.since_ms,
                "offsets": {str(p): r.ranges() for p, r in sorted(self.pending.offsets.items())},
            },
        }

    def dumps(self) -> str:
        """The document as compact JSON text, as the table stores it."""
        return json.dumps(self.to_json(), separators=(",", ":"))


def _partitions(doc: dict[str, Any]) -> dict[int, RangeSet]:
    return {int(p): RangeSet(ranges) for p, ranges in doc.items()}


def load_legacy(
    path: Path, cluster: str, failure_topic: str, failure_topic_id: str, target_topic: str
) -> ReplayState | None:
    """The state file an earlier version left at `path`, or None when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OpsError(f"legacy state file {path} is unreadable ({exc}); move it away", USAGE) from None
    return ReplayState.from_json(
        text,
        f"legacy state file {path}",
        cluster,
        failure_topic,
        failure_topic_id,
        target_topic,
        "move it away, or pass --restart (dead letters it records as replayed would be produced again)",
    )
