"""The two Kafka outputs: enriched messages to OUTPUT_TOPIC, dead letters to FAILURE_TOPIC
(docs/operations.md, "Records a topic refuses"). Both hand a round's messages to a worker's
`KafkaWriter` in `write` and wait for Kafka's acknowledgements of the oldest round in `flush`.

- An enriched message the output topic refuses comes back from `flush` as a
  `payload_too_large` dead letter, which the delivery then writes like any other (its
  history row rewritten, the dead letter produced).
- A dead letter the failure topic refuses is sent again compressed (zstd); if still
  refused, without the input's headers (key and value intact), plain then compressed; then
  without its value, then without its key (`error.omitted` says what was left out). If even
  that is refused, the topic is misconfigured: `DeliveryFailed`.
"""

from __future__ import annotations

import collections
import datetime as dt
import time
from collections.abc import Callable, Sequence

import msgspec

from flows.adapters.kafka.writer import KafkaWriter, Sending
from flows.core import outcome
from flows.core.model import Code, Outcome, Stage
from flows.core.sizes import record_size
from flows.errors import DeliveryFailed, DependencyError
from flows.retry import Retries
from flows.telemetry.failurelog import FailureLog
from flows.telemetry.metrics import Metrics

Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _KafkaOutput:
    def __init__(self, name: str, kafka: KafkaWriter, metrics: Metrics | None) -> None:
        self.name = name
        self.kafka = kafka
        self.metrics = metrics
        self._rounds: collections.deque[tuple[Sequence[Outcome], Sending | None, float, list[Outcome]]] = (
            collections.deque()
        )

    def _send(self, items: Sequence[Outcome], unsent: list[Outcome] | None = None) -> None:
        """Start a round (maybe empty); `unsent` are its outcomes not sent, for `_wait` to return."""
        sending = self.kafka.send([r.message for r in items]) if items else None
        self._rounds.append((items, sending, time.perf_counter(), unsent or []))

    def _wait(self) -> list[Outcome]:
        """Wait for the oldest round's messages; those refused even alone, then its unsent."""
        items, sending, started, unsent = self._rounds.popleft()
        if sending is None:
            return unsent
        refused = [items[i] for i in self.kafka.wait(sending)] + unsent
        if self.metrics is not None:
            self.metrics.add_written(self.name, len(items), time.perf_counter() - started)
        return refused

    def discard(self) -> None:
        """Forget the rounds not flushed (their reports, if any come, are not waited for)."""
        self._rounds.clear()

    def close(self) -> None:
        """The worker's KafkaWriter is closed with the worker's other clients."""


class EnrichedMessages(_KafkaOutput):
    """Enriched messages to the output topic."""

    def __init__(
        self,
        kafka: KafkaWriter,
        failure_topic: str,
        metrics: Metrics | None = None,
        notes: FailureLog | None = None,
        wallclock: Clock = _utcnow,
        name: str = "enriched",
        encode: Callable[[bytes], bytes] | None = None,
    ) -> None:
        super().__init__(name, kafka, metrics)
        self.failure_topic = failure_topic
        self.notes = notes
        self._now = wallclock
        self._encode = encode  # OUTPUT_FORMAT other than json: the enriched JSON in that format
        self._unencodable: collections.deque[list[Outcome]] = collections.deque()

    def write(self, items: Sequence[Outcome]) -> None:
        """Hand the round's messages to the producer (first in the output format)."""
        failed: list[Outcome] = []
        if self._encode is not None:
            items, failed = self._encoded(items)
        self._unencodable.append(failed)
        self._send(items)

    def _encoded(self, items: Sequence[Outcome]) -> tuple[list[Outcome], list[Outcome]]:
        """Each message in the output format; one its serializer refuses becomes a dead
        letter (`internal_error`: the pipeline's own event should always fit its schema)."""
        encode = self._encode
        assert encode is not None
        done: list[Outcome] = []
        failed: list[Outcome] = []
        replace = msgspec.structs.replace
        for r in items:
            try:
                value = encode(r.message.value or b"")
            except DependencyError:
                raise
            except Exception as exc:  # noqa: BLE001 - this record alone
                why = f"the output format could not encode the enriched event: {type(exc).__name__}: {exc}"
                failed.append(
                    outcome.rerouted(r, Code.INTERNAL_ERROR, Stage.INTERNAL, why, self.failure_topic, self._now())
                )
                continue
            done.append(replace(r, message=replace(r.message, value=value)))
        return done, failed

    def discard(self) -> None:
        """Forget the rounds not flushed."""
        super().discard()
        self._unencodable.clear()

    def flush(self) -> list[Outcome]:
        """Wait for Kafka; messages the topic refused come back as dead letters."""
        rerouted: list[Outcome] = []
        unencodable = self._unencodable.popleft() if self._unencodable else []
        for r in self._wait():
            size = record_size(r.message.key, r.message.value, r.message.headers)
            rerouted.append(
                outcome.refused_by_output(
                    r, f"{size} bytes, over its max.message.bytes", self.failure_topic, self._now()
                )
            )
        if rerouted:
            if self.metrics is not None:
                self.metrics.add_fallbacks(["output_refused"] * len(rerouted))
            if self.notes is not None:
                self.notes.note(("output_refused", r) for r in rerouted)
        return rerouted + unencodable


class DeadLetters(_KafkaOutput):
    """Dead letters to the failure topic, whole whenever the topic takes them."""

    def __init__(
        self,
        kafka: KafkaWriter,
        failure_topic: str,
        limit: int | None,
        retries: Retries,
        metrics: Metrics | None = None,
        notes: FailureLog | None = None,
        name: str = "failed",
    ) -> None:
        super().__init__(name, kafka, metrics)
        self.failure_topic = failure_topic
        self.limit = limit
        self.retries = retries
        self.notes = notes

    def write(self, items: Sequence[Outcome]) -> None:
        """Hand the round's dead letters to the producer; one larger than the topic takes
        skips the plain attempt."""
        if self.limit is None:
            self._send(items)
            return
        fitting: list[Outcome] = []
        oversize: list[Outcome] = []
        for r in items:
            if record_size(r.message.key, r.message.value, r.message.headers) > self.limit:
                oversize.append(r)
            else:
                fitting.append(r)
        self._send(fitting, oversize)

    def flush(self) -> list[Outcome]:
        """Wait for Kafka, then deliver what the topic refused another way; never re-routes."""
        todo = self._wait()
        events = [(self._fallback(r), r) for r in todo]
        if events:
            if self.metrics is not None:
                self.metrics.add_fallbacks(kind for kind, _ in events)
            if self.notes is not None:
                self.notes.note(events)
        return []

    def _fallback(self, r: Outcome) -> str:
        """Deliver a dead letter the failure topic refused, in the first form it takes."""
        message = r.message
        size = record_size(message.key, message.value, message.headers)
        note = f"The dead letter ({size} bytes) does not fit the failure topic whole, even compressed."
        keyed_note = "The failure topic refuses the dead letter of a record without a key: keyed by its coordinates."
        without_headers = outcome.trimmed(message, note, ("headers",))
        forms = [("dead_letter_compressed", message, True)]
        if message.key is None:  # a topic that takes no record without a key (compacted)
            forms.append(("dead_letter_keyed", outcome.keyed(message, keyed_note), False))
        forms += [("dead_letter_without_headers", without_headers, False)]
        forms += [("dead_letter_without_headers", without_headers, True)]
        forms += [
            ("dead_letter_without_value", outcome.trimmed(message, note, omit), False)
            for omit in (("value", "headers"), ("value", "headers", "key"))
        ]
        if message.key is None:
            forms.append(("dead_letter_keyed", outcome.keyed(message, keyed_note, ("value", "headers")), False))
        last = None
        for kind, form, compressed in forms:
            last = self.kafka.send_alone(form, compressed=compressed)
            if last is None:
                return kind
        raise self.retries.gave_up(
            DeliveryFailed(
                f"{self.failure_topic} refuses every form of the dead letter of {r.record.coordinates}, even "
                f"without value, headers and key (last: {last}): check the topic's max.message.bytes and "
                "cleanup.policy"
            )
        )
