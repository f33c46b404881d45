"""Refuse a replay target by what it holds, not only by its name.

The settings name the pipeline's outputs (OUTPUT_TOPIC, FAILURE_TOPIC), but an operator's
shell may not have them exported, and then `--to events.enriched` would pass a check by
name. So the last few records of each partition of the target are read: if any carries
the headers the pipeline puts on what it writes (`ops.replay_rules.output_marks`), the
target is one of its outputs, and dead letters (raw input) don't belong there. Replays
in an input topic (`replay.of`) don't count. An empty topic can't be judged and is
allowed; one that can't be read in time is refused (status 2), since it can't be judged
either and producing is the step that can't be undone.
"""

from __future__ import annotations

import contextlib
import time

from confluent_kafka import Consumer

from ops import scan
from ops.errors import USAGE, OpsError
from ops.replay_rules import output_marks

RECENT_PER_PARTITION = 20


def refuse_output_topic(consumer: Consumer, topic: str, timeout: float) -> None:
    """OpsError (status 2) when the last records of `topic` carry the pipeline's output headers,
    or can't be read in time to tell; an empty topic passes."""
    parts = scan.partitions(consumer, topic, timeout)
    marks = scan.watermarks(consumer, topic, parts, timeout)
    wins = {p: (max(lo, hi - RECENT_PER_PARTITION), hi) for p, (lo, hi) in marks.items()}
    if all(hi <= lo for lo, hi in wins.values()):
        return
    deadline = time.monotonic() + 3 * timeout
    seen = 0
    try:
        with contextlib.closing(scan.scan(consumer, topic, wins, stall_s=timeout)) as records:
            for rec in records:
                seen += 1
                found = output_marks(rec.headers)
                if found is not None:
                    raise OpsError(
                        f"refusing to replay into {topic}: its record {rec.coordinates} carries {found} "
                        "headers, which the pipeline puts on what it writes (enriched events, dead "
                        f"letters), so {topic} is a pipeline output and dead letters are raw input; "
                        "replay into the input topic (the default) or --to an input topic",
                        USAGE,
                    )
                if time.monotonic() > deadline:
                    break
    except OpsError as exc:
        if exc.status == USAGE:
            raise
        seen = 0
    if not seen:
        raise OpsError(
            f"could not read the last records of {topic} within {3 * timeout:g}s to check that it is "
            "not one of the pipeline's outputs; refusing to replay into it",
            USAGE,
        )
