"""Delivering a batch's outcome: every history row, and every message to its topic.

One step does all three writes of a batch, in an order that holds whatever Bytewax does
with its operators: the messages are handed to the producer first (they travel while the
rest happens), then the history rows are written and acknowledged, then every Kafka
acknowledgement is awaited. The batch is done only then.

A message that a topic still refuses (the size rule is checked at start, so this happens
only for a record that arrived compressed, or a topic changed under the running flow)
neither stops the flow nor vanishes (README, "Records a topic refuses"):
- an enriched message the output topic refuses becomes a `payload_too_large` dead letter,
  and its history row is rewritten to say so (an upsert of the same row, after the first);
- a dead letter the failure topic refuses is sent again compressed (zstd); if still
  refused, without the input's headers (key and value intact), plain then compressed;
  then without the value too, then without the key (`error.omitted` lists what was left
  out; the record stays in the input topic at its `source.*` coordinates).
Each such event is counted and logged, aggregated (`flows.failurelog`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows import route
from flows.failurelog import FailureLog
from flows.kafka_io import DeliveryFailed, KafkaWriter
from flows.model import HistoryRow, Routed
from flows.retry import gave_up
from flows.sizes import TopicLimits, record_size
from flows.stats import STATS

log = logging.getLogger(__name__)


class HistoryStore(Protocol):
    def write(self, rows: Sequence[HistoryRow]) -> None: ...

    def close(self) -> None: ...


class Delivery:
    def __init__(self, kafka: KafkaWriter, history: HistoryStore, failure_topic: str, limits: TopicLimits | None,
                 notes: FailureLog | None = None,
                 wallclock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.kafka = kafka
        self.history = history
        self.failure_topic = failure_topic
        self.limits = limits
        self.notes = notes
        self._now = wallclock

    def write(self, results: Sequence[Routed]) -> None:
        if not results:
            return
        fitting, oversize = self._split(results)
        sending = self.kafka.send([r.message for r in fitting])
        self.history.write([r.history for r in results])
        refused = self.kafka.wait(sending)
        if refused or oversize:
            self._deliver_refused([fitting[i] for i in refused], oversize)

    def _split(self, results: Sequence[Routed]) -> tuple[list[Routed], list[Routed]]:
        """Dead letters too large for the failure topic skip the first, plain attempt."""
        if self.limits is None:
            return list(results), []
        limit = self.limits.failure
        fitting: list[Routed] = []
        oversize: list[Routed] = []
        for r in results:
            if not r.ok and record_size(r.message.key, r.message.value, r.message.headers) > limit:
                oversize.append(r)
            else:
                fitting.append(r)
        return fitting, oversize

    def _deliver_refused(self, refused: list[Routed], oversize: list[Routed]) -> None:
        corrections: list[HistoryRow] = []
        events: list[tuple[str, Routed]] = []
        for r in refused:
            if r.ok:
                size = record_size(r.message.key, r.message.value, r.message.headers)
                dead = route.refused_by_output(r, f"{size} bytes, over its max.message.bytes", self.failure_topic,
                                               self._now())
                corrections.append(dead.history)
                events.append(("output_refused", r))
                if self.kafka.send_alone(dead.message) is None:
                    continue
                r = dead
            self._dead_letter_fallbacks(r, events)
        for r in oversize:
            self._dead_letter_fallbacks(r, events)
        if corrections:
            self.history.write(corrections)
        STATS.add_fallbacks(kind for kind, _ in events)
        if self.notes is not None:
            self.notes.note(events)

    def _dead_letter_fallbacks(self, r: Routed, events: list[tuple[str, Routed]]) -> None:
        send = self.kafka.send_alone
        if send(r.message, compressed=True) is None:
            events.append(("dead_letter_compressed", r))
            return
        size = record_size(r.message.key, r.message.value, r.message.headers)
        note = f"The dead letter ({size} bytes) does not fit the failure topic whole, even compressed."
        without_headers = route.trimmed(r.message, note, ("headers",))
        if send(without_headers) is None or send(without_headers, compressed=True) is None:
            events.append(("dead_letter_without_headers", r))
            return
        for omit in (("value", "headers"), ("value", "headers", "key")):
            if send(route.trimmed(r.message, note, omit)) is None:
                events.append(("dead_letter_without_value", r))
                return
        raise gave_up(DeliveryFailed(f"{self.failure_topic} refuses even a dead letter without value, headers and "
                                     f"key for {r.record.coordinates}: check the topic's max.message.bytes"))

    def close(self) -> None:
        try:
            self.kafka.close()
        finally:
            self.history.close()


class _DeliveryPartition(StatelessSinkPartition[Routed]):
    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery

    def write_batch(self, items: list[Routed]) -> None:
        self.delivery.write(items)

    def close(self) -> None:
        self.delivery.close()


class DeliverySink(DynamicSink[Routed]):
    """The dataflow's one output step: a `Delivery` per worker, built with the worker."""

    def __init__(self, build: Callable[[int], Delivery]) -> None:
        self._build = build

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeliveryPartition:
        return _DeliveryPartition(self._build(worker_index))
