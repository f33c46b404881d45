"""Where a replay run starts from: the shared state (`ops.replay_store`), `--restart`, and
the one-time import of a state file that an earlier version kept in a local directory.

Importing: earlier versions kept the document in `.ops-state/` of the directory the
command ran in. When a run finds such a file for its cluster and topics, it adds what the
file records to the shared state (replayed offsets, and a chunk left in flight, which is
then settled like any other) and renames the file to `*.migrated`, so it is imported once.
Adding rather than only filling an empty row is what keeps "never twice" when operators
had files in several places: each file records what was really produced into the target.
With `--restart` the file is set aside the same way, unread.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ops.errors import USAGE, OpsError
from ops.replay_state import LEGACY_DIR, ReplayState, legacy_path, load_legacy
from ops.replay_store import Lease, Row, StateKey, Store

MIGRATED = ".migrated"


@dataclass(frozen=True)
class Target:
    """The identity of a replay's state: the cluster, the failure topic (and its id, which
    tells it from an older topic of the same name) and the target topic."""

    cluster: str
    failure_topic: str
    failure_topic_id: str
    target_topic: str

    @property
    def key(self) -> StateKey:
        """This replay's row in `replay_state` (the topic id is checked in its document, not keyed)."""
        return StateKey(self.cluster, self.failure_topic, self.target_topic)

    def empty(self) -> ReplayState:
        """A state with nothing replayed: a first run's, or one after `--restart`."""
        return ReplayState(self.cluster, self.failure_topic, self.failure_topic_id, self.target_topic)


def _from_row(store: Store, target: Target, row: Row) -> ReplayState:
    if row.state is None:
        return target.empty()
    return ReplayState.from_json(
        row.state,
        f"the replay state of {target.key} in {store.table}",
        target.cluster,
        target.failure_topic,
        target.failure_topic_id,
        target.target_topic,
        "pass --restart to start over (dead letters it records as replayed would be produced again)",
    )


def had_pending(row: Row) -> bool:
    """Whether the row itself (not an imported file) records a chunk in flight."""
    try:
        return bool(row.state and json.loads(row.state).get("pending"))
    except (ValueError, AttributeError):
        return False


def _in_flight_note(old: ReplayState) -> str:
    return f", {len(old.pending)} in flight" if old.pending is not None else ""


def peek(store: Store, target: Target, restart: bool, legacy_dir: Path | None, out: TextIO) -> ReplayState:
    """The state a real run would start from, without the lease and without writing (dry run)."""
    row = store.read(target.key)
    if row.holder is not None:
        print(f"note: a replay is running for {target.key} now: {row.holder.describe()}", file=out)
    if restart:
        return target.empty()
    state = _from_row(store, target, row)
    path = legacy_path(legacy_dir or LEGACY_DIR, target.cluster, target.failure_topic, target.target_topic)
    old = load_legacy(path, target.cluster, target.failure_topic, target.failure_topic_id, target.target_topic)
    if old is not None:
        state.merge(old)
        print(
            f"a real run would first import the legacy state file {path} ({old.count()} dead letters "
            f"replayed{_in_flight_note(old)})",
            file=out,
        )
    return state


def start(
    store: Store, lease: Lease, target: Target, restart: bool, legacy_dir: Path | None, out: TextIO
) -> ReplayState:
    """The state this run (holding the lease) starts from; every later change is written
    through the lease."""
    path = legacy_path(legacy_dir or LEGACY_DIR, target.cluster, target.failure_topic, target.target_topic)
    old: ReplayState | None = None
    if restart:
        state = target.empty()
        try:  # the state is not read otherwise: --restart is also the way out of an unreadable one
            forgotten = str(_from_row(store, target, lease.row).count())
        except OpsError:
            forgotten = "all (unreadable)"
        print(f"--restart: forgot {forgotten} dead letters recorded as replayed to {target.target_topic}", file=out)
    else:
        state = _from_row(store, target, lease.row)
        old = load_legacy(path, target.cluster, target.failure_topic, target.failure_topic_id, target.target_topic)
        if old is not None:
            state.merge(old)
    state.save = lambda s: lease.write(s.dumps())
    if restart or old is not None:
        state.save(state)
    if old is not None:
        _set_aside(path)
        print(
            f"imported legacy state file {path} into {store.table} ({old.count()} dead letters replayed"
            f"{_in_flight_note(old)}); renamed it to {path.name}{MIGRATED}",
            file=out,
        )
    elif restart and path.exists():
        _set_aside(path)
        print(f"legacy state file {path} set aside unread (--restart); renamed it to {path.name}{MIGRATED}", file=out)
    return state


def _set_aside(path: Path) -> None:
    try:
        os.replace(path, path.with_name(path.name + MIGRATED))
    except OSError as exc:
        raise OpsError(
            f"legacy state file {path} was imported but can't be renamed ({exc}); move it away "
            "yourself, or the next run imports it again (harmless: it only adds)",
            USAGE,
        ) from None


def warn_state_dir(given: Path | None) -> None:
    """Warn on stderr when `--state-dir` is given: it now only says where to look for a state file
    of an earlier version, to import."""
    if given is not None:
        print(
            f"ops replay: --state-dir is deprecated: the replay state is shared in the history keyspace now; "
            f"{given} is only searched for a state file of an earlier version, to import it once",
            file=sys.stderr,
        )
