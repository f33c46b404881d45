"""`ops rewind`: process the input again from a point in time or an offset (the day after a
bug fix), as Kafka Streams' application reset tool does for a Streams application.

What moves, for each partition of INPUT_TOPIC, to the target offset:
- the consumer group's committed offset (CONSUMER_GROUP): where exactly-once resumes, and
  where at-least-once resumes a partition without a snapshot;
- at-least-once: the position Bytewax keeps in its recovery store, the snapshot of the input
  step for that partition, in every `part-*.sqlite3` of the recovery directories given
  (each process's, for a cluster with a volume per process).

The target: `--to-datetime` (the first record at or after that time, by the records' Kafka
timestamps; the end of a partition with none), `--by-duration` (that long before now),
`--to-offset [PARTITION:]OFFSET` (clamped to what the partition holds), `--to-earliest`,
`--to-latest`. Refused while the flow runs: the group has members (exactly-once), or a
dataflow process holds a recovery directory (its `.running.lock`). `--dry-run` shows what
would move and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import io
import pickle  # noqa: S403 - Bytewax's own format for snapshots; read back with a restricted unpickler
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from flows import connections
from flows.settings import Settings
from ops.errors import USAGE, OpsError

# the input step of the flow (flows.runtime.bytewax.flow: Dataflow "enrichment", input "kafka_in");
# tests/unit/test_ops_rewind.py checks it against the flow
INPUT_STEP = "enrichment.kafka_in"
RUNNING_LOCK = ".running.lock"  # held (shared) by every dataflow process using the directory


@dataclass(frozen=True)
class Target:
    """Where to move: `kind` is datetime (at `ms`), offset (`offsets`, None for every
    partition not named), earliest or latest."""

    kind: str
    ms: int | None = None
    offsets: dict[int | None, int] = field(default_factory=dict)

    def describe(self) -> str:
        """The target in words."""
        if self.kind == "datetime" and self.ms is not None:
            return "the first record at or after " + dt.datetime.fromtimestamp(self.ms / 1000, dt.UTC).isoformat()
        if self.kind == "offset":
            return "offsets " + ", ".join(
                f"{'*' if p is None else p}:{o}"
                for p, o in sorted(self.offsets.items(), key=lambda kv: -1 if kv[0] is None else kv[0])
            )
        return self.kind


@dataclass
class Move:
    """One partition: what it holds, where the group and the snapshots have it, where it goes."""

    partition: int
    low: int
    high: int
    group: int | None
    snapshot: int | None
    to: int

    @property
    def again(self) -> int:
        """Records read again from the new position (before: the last position known)."""
        before = self.snapshot if self.snapshot is not None else self.group
        return max(0, (before if before is not None else self.high) - self.to)


def parse_offset(text: str) -> tuple[int | None, int]:
    """`OFFSET` (every partition not named) or `PARTITION:OFFSET`."""
    part, _, offset = text.rpartition(":")
    try:
        value = int(offset)
        partition = int(part) if part else None
    except ValueError:
        raise ValueError(f"{text!r}: expected OFFSET or PARTITION:OFFSET") from None
    if value < 0 or (partition is not None and partition < 0):
        raise ValueError(f"{text!r}: partitions and offsets are not negative")
    return partition, value


class _IntsOnly(pickle.Unpickler):
    """Snapshots of the input step are ints: nothing else is ever constructed."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"not a position: {module}.{name}")


def _position(blob: bytes | None) -> int | None:
    if blob is None:
        return None
    value = _IntsOnly(io.BytesIO(blob)).load()
    return value if isinstance(value, int) else None


def _state_key(partition: int, topic: str) -> str:
    return f"{partition}-{topic}"


def snapshot_files(dirs: Sequence[Path]) -> list[Path]:
    """The recovery partitions in the directories (refused when a directory holds none)."""
    files: list[Path] = []
    for d in dirs:
        found = sorted(d.glob("part-*.sqlite3"))
        if not found:
            raise OpsError(f"recovery directory {d}: no part-*.sqlite3 in it (is it the dataflow's -r directory?)")
        files += found
    return files


def snapshots(files: Sequence[Path], topic: str) -> dict[int, int]:
    """Each input partition's position in the recovery store (its latest snapshot)."""
    found: dict[int, tuple[int, int]] = {}  # partition -> (epoch, position)
    for path in files:
        with sqlite3.connect(path) as conn:
            rows = conn.execute(
                "SELECT state_key, snap_epoch, ser_change FROM snaps WHERE step_id = ?", (INPUT_STEP,)
            ).fetchall()
        for key, epoch, blob in rows:
            idx, _, key_topic = str(key).partition("-")
            position = _position(blob)
            if key_topic != topic or not idx.isdigit() or position is None:
                continue
            p = int(idx)
            if p not in found or epoch > found[p][0]:
                found[p] = (epoch, position)
    return {p: pos for p, (_, pos) in found.items()}


def write_snapshots(files: Sequence[Path], topic: str, moves: Sequence[Move]) -> int:
    """Set every snapshot of each moved partition's input position (whatever its epoch, so
    whichever a restart loads) to its new offset; the rows changed."""
    changed = 0
    for path in files:
        with sqlite3.connect(path) as conn:
            for m in moves:
                cur = conn.execute(
                    "UPDATE snaps SET ser_change = ? WHERE step_id = ? AND state_key = ? AND ser_change IS NOT NULL",
                    (pickle.dumps(m.to), INPUT_STEP, _state_key(m.partition, topic)),
                )
                changed += cur.rowcount
    return changed


@contextmanager
def unused(dirs: Sequence[Path]) -> Iterator[None]:
    """Hold each recovery directory's run lock exclusively: refused while a dataflow process
    holds it (every process with a recovery directory holds it shared while it runs)."""
    with ExitStack() as stack:
        for d in dirs:
            lock = stack.enter_context(open(d / RUNNING_LOCK, "a"))  # noqa: SIM115 - closed by the stack
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OpsError(f"a dataflow process is running with recovery directory {d}: stop it first") from None
        yield


def refuse_if_members(settings: Settings) -> None:
    """The group has active members: exactly-once runs (its commits would undo the rewind)."""
    admin = AdminClient(connections.kafka_common(settings))
    futures = admin.describe_consumer_groups(
        [settings.consumer_group], request_timeout=settings.startup_timeout_seconds
    )
    try:
        desc = futures[settings.consumer_group].result(timeout=settings.startup_timeout_seconds + 5)
    except KafkaException as exc:
        raise OpsError(f"consumer group {settings.consumer_group}: {exc}") from None
    if desc.members:
        names = ", ".join(sorted(m.client_id for m in desc.members)[:5])
        raise OpsError(
            f"the flow is running: consumer group {settings.consumer_group} has {len(desc.members)} member(s) "
            f"({names}); stop it first"
        )


def plan(consumer: Consumer, settings: Settings, target: Target, positions: dict[int, int]) -> list[Move]:
    """Each partition's move."""
    topic = settings.input_topic
    timeout = settings.startup_timeout_seconds
    meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None:
        raise OpsError(f"Kafka topic '{topic}' (INPUT_TOPIC) does not exist")
    partitions = sorted(meta.partitions)
    unknown = sorted(p for p in target.offsets if p is not None and p not in partitions)
    if unknown:
        raise OpsError(f"{topic} has no partition {', '.join(map(str, unknown))} (it has {len(partitions)})")
    committed = {
        tp.partition: tp.offset
        for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
        if tp.offset >= 0
    }
    at_time: dict[int, int] = {}
    if target.kind == "datetime" and target.ms is not None:
        found = consumer.offsets_for_times([TopicPartition(topic, p, target.ms) for p in partitions], timeout=timeout)
        at_time = {tp.partition: tp.offset for tp in found}
    moves: list[Move] = []
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        if target.kind == "earliest":
            to = low
        elif target.kind == "latest":
            to = high
        elif target.kind == "datetime":
            to = at_time.get(p, -1)
            to = high if to < 0 else to  # no record at or after the time: the end
        else:
            wanted = target.offsets.get(p, target.offsets.get(None))
            if wanted is None:
                continue  # not named, and no default
            to = wanted
        moves.append(Move(p, low, high, committed.get(p), positions.get(p), min(max(to, low), high)))
    return moves


def report(moves: Sequence[Move], target: Target, dirs: Sequence[Path], out: TextIO, dry_run: bool) -> None:
    """The plan, a row per partition."""
    print(f"rewind to {target.describe()}{' (dry run: nothing changed)' if dry_run else ''}", file=out)
    print("partition  log start  log end  group offset  snapshot  -> new offset  read again", file=out)
    for m in moves:
        group = "-" if m.group is None else str(m.group)
        snap = "-" if not dirs else ("none" if m.snapshot is None else str(m.snapshot))
        print(f"{m.partition:>9}  {m.low:>9}  {m.high:>7}  {group:>12}  {snap:>8}  {m.to:>13}  {m.again:>10}", file=out)
    print(f"total read again: {sum(m.again for m in moves)}", file=out)


@dataclass(frozen=True)
class Options:
    """What `ops rewind` was asked."""

    target: Target
    recovery_dirs: tuple[Path, ...] = ()
    dry_run: bool = False
    group_only: bool = False


def run(settings: Settings, opts: Options, out: TextIO) -> int:
    """Plan, refuse while the flow runs, then move the group's offsets and the snapshots."""
    dirs = opts.recovery_dirs
    if not settings.exactly_once and not dirs and not opts.group_only:
        raise OpsError(
            "at-least-once resumes from its recovery snapshots: give each process's --recovery-directory "
            "(or --group-only to move only the consumer group's offsets)",
            USAGE,
        )
    for d in dirs:
        if not d.is_dir():
            raise OpsError(f"recovery directory {d} does not exist")
    files = snapshot_files(dirs)
    refuse_if_members(settings)
    consumer = Consumer(
        {**connections.kafka_common(settings), "group.id": settings.consumer_group, "enable.auto.commit": False}
    )
    try:
        with unused(dirs):
            moves = plan(consumer, settings, opts.target, snapshots(files, settings.input_topic))
            report(moves, opts.target, dirs, out, opts.dry_run)
            if opts.dry_run or not moves:
                return 0
            results = consumer.commit(
                offsets=[TopicPartition(settings.input_topic, m.partition, m.to) for m in moves], asynchronous=False
            )
            refused = [f"{tp.partition}: {tp.error}" for tp in results or [] if tp.error is not None]
            if refused:
                raise OpsError(f"the group refused offsets: {'; '.join(refused)}", USAGE)
            rows = write_snapshots(files, settings.input_topic, moves) if files else 0
            where = f"; {rows} snapshot row(s) in {len(files)} recovery partition(s)" if files else ""
            print(f"moved: consumer group {settings.consumer_group}{where}", file=out)
            return 0
    finally:
        consumer.close()
