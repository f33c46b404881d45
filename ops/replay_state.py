"""What a replay has already produced, kept in a file so that an interrupted or repeated
replay never produces the same dead letter twice into the same target topic.

Why "which dead letters were replayed" and not a position: a replay selects records (by
code, time, offsets), so a position only means "everything before it was looked at under
that selection"; a later run with another selection would skip records it never replayed,
or replay records again. The replayed offsets, kept as merged ranges per partition, stay
small (dead letters of one cause come in runs) and hold for any selection.

Why a file and not committed consumer-group offsets: group offsets are a position (see
above), and they give no place for the chunk in flight. The file is written atomically
(temporary file, fsync, rename), and each chunk goes through it write-ahead:

1. the chunk is recorded as pending, with the time;
2. it is produced, and every message must be acknowledged (idempotent producer);
3. it moves to `replayed` and pending is cleared.

A run that finds a pending chunk (the process was killed between 1 and 3) looks in the
target topic, from just before the pending time, for records whose `replay.of` header names
those dead letters: found ones count as replayed, the others are produced again.

One file per (cluster, failure topic, target topic), under `--state-dir`; a lock file keeps
two replays from using it at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.errors import USAGE, OpsError
from ops.ranges import RangeSet

VERSION = 1
# records of the pending chunk were produced after this much before the pending time
# (the producer's clock, or the broker's with LogAppendTime, may lag the machine's)
PENDING_MARGIN_MS = 60_000


def state_path(directory: Path, cluster: str, failure_topic: str, target_topic: str) -> Path:
    """A readable name, plus a digest that tells clusters (and ambiguous names) apart."""
    digest = hashlib.sha256(f"{cluster}\0{failure_topic}\0{target_topic}".encode()).hexdigest()[:10]
    return directory / f"replay.{failure_topic}.to.{target_topic}.{digest}.json"


@dataclass
class Pending:
    since_ms: int
    offsets: dict[int, RangeSet]

    def __len__(self) -> int:
        return sum(len(r) for r in self.offsets.values())


@dataclass
class ReplayState:
    path: Path
    cluster: str
    failure_topic: str
    failure_topic_id: str
    target_topic: str
    replayed: dict[int, RangeSet] = field(default_factory=dict)
    pending: Pending | None = None

    @classmethod
    def load(cls, path: Path, cluster: str, failure_topic: str, failure_topic_id: str, target_topic: str,
             restart: bool = False) -> ReplayState:
        state = cls(path, cluster, failure_topic, failure_topic_id, target_topic)
        if restart or not path.exists():
            return state
        try:
            doc = json.loads(path.read_text())
            if doc.get("version") != VERSION:
                raise ValueError(f"version {doc.get('version')!r}, expected {VERSION}")
            recorded_id = doc["failure_topic_id"]
            state.replayed = _partitions(doc["replayed"])
            pending = doc.get("pending")
            if pending:
                state.pending = Pending(int(pending["since_ms"]), _partitions(pending["offsets"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OpsError(f"state file {path} is unreadable ({exc}); move it away, or pass --restart to "
                           "start over (records already replayed would be produced again)") from None
        if recorded_id != failure_topic_id:
            raise OpsError(f"state file {path} belongs to an earlier topic named {failure_topic} (topic id "
                           f"{recorded_id}, now {failure_topic_id}); its offsets name other records: move it "
                           "away or pass --restart", USAGE)
        return state

    def is_replayed(self, partition: int, offset: int) -> bool:
        done = self.replayed.get(partition)
        return done is not None and offset in done

    def count(self) -> int:
        return sum(len(r) for r in self.replayed.values())

    def begin(self, coordinates: Iterable[tuple[int, int]], now_ms: int) -> None:
        offsets: dict[int, RangeSet] = {}
        for p, o in coordinates:
            offsets.setdefault(p, RangeSet()).add(o)
        self.pending = Pending(now_ms - PENDING_MARGIN_MS, offsets)
        self.save()

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
        self.save()

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "cluster_id": self.cluster,
            "failure_topic": self.failure_topic,
            "failure_topic_id": self.failure_topic_id,
            "target_topic": self.target_topic,
            "updated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "replayed_count": self.count(),
            "replayed": {str(p): r.ranges() for p, r in sorted(self.replayed.items())},
            "pending": None if self.pending is None else {
                "since_ms": self.pending.since_ms,
                "offsets": {str(p): r.ranges() for p, r in sorted(self.pending.offsets.items())},
            },
        }

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _partitions(doc: dict[str, Any]) -> dict[int, RangeSet]:
    return {int(p): RangeSet(ranges) for p, ranges in doc.items()}


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold `<state file>.lock` for the run: two replays on one state file would each
    produce what the other has not recorded yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OpsError(f"another replay is using {path} (lock {lock_path} is held)", USAGE) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
