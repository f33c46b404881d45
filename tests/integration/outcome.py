"""What a run left behind, as a user would check it: the messages of the output and failure
topics by the input coordinates in their `source.*` headers, and the history rows."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cassandra.cluster import Session

from flows.adapters.scylla.session import TABLE
from flows.settings import Settings
from tools.kafkautil import read_topic

Coordinates = tuple[int, int]  # input partition, offset


@dataclass(frozen=True)
class Out:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes | None]

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode()


@dataclass
class Outcome:
    enriched: dict[Coordinates, Out] = field(default_factory=dict)
    failed: dict[Coordinates, Out] = field(default_factory=dict)
    duplicates: Counter[Coordinates] = field(default_factory=Counter)
    history: dict[Coordinates, Any] = field(default_factory=dict)

    def routed(self, at: Coordinates) -> Out | None:
        return self.enriched.get(at) or self.failed.get(at)

    def code(self, at: Coordinates) -> str | None:
        out = self.failed.get(at)
        return None if out is None else out.header("error.code")


def collect(
    settings: Settings,
    cql: Session,
    keyspace: str,
    input_topic: str,
    output_topic: str,
    failure_topic: str,
    committed_only: bool = False,
) -> Outcome:
    outcome = Outcome()
    for topic, into in ((output_topic, outcome.enriched), (failure_topic, outcome.failed)):
        for msg in read_topic(settings, topic, 180, committed_only):
            headers = dict(msg.headers() or [])
            assert headers.get("source.topic") == input_topic.encode(), headers
            at = (int(headers["source.partition"] or b""), int(headers["source.offset"] or b""))
            if at in outcome.enriched or at in outcome.failed:
                outcome.duplicates[at] += 1
            into[at] = Out(topic, msg.key(), msg.value(), headers)
    rows = cql.execute(
        f"SELECT * FROM {keyspace}.{TABLE} WHERE source_topic = %s ALLOW FILTERING",  # noqa: S608
        (input_topic,),
        timeout=120,
    )
    for row in rows:
        outcome.history[(row.source_partition, row.source_offset)] = row
    return outcome


def readable(row: Any) -> bool:
    """A history row whose timestamps read back as datetimes (the driver returns an int, or
    raises, for one out of range)."""
    return all(v is None or isinstance(v, dt.datetime) for v in (row.occurred_at, row.processed_at))
