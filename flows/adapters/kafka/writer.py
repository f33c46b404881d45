"""Producing to Kafka with every delivery checked: an idempotent producer (`acks=all`) and a
delivery callback on every message; a batch is done only when each one is acknowledged.

A message a topic refuses for what it is (size, validity) is tried again alone, so that only
the messages that can't be written at all come back to the caller (the broker refuses a
whole batch for one message in it); any other delivery error raises `DeliveryFailed`, so
nothing is lost silently. (Bytewax's KafkaSink drops failed deliveries silently.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from flows.adapters.kafka.config import producer_config
from flows.adapters.kafka.errors import RECORD_REFUSALS, error_kind
from flows.adapters.kafka.topics import max_message_bytes
from flows.core.model import OutMessage
from flows.core.outcome import KEY_HEADER, OMITTED_HEADER
from flows.core.sizes import record_size
from flows.errors import DeliveryFailed, RecordsRefused
from flows.retry import Kind, Retries
from flows.settings import Settings

log = logging.getLogger(__name__)
LARGEST_PRODUCE_BYTES = 1_000_000_000  # librdkafka's ceiling for message.max.bytes


class Sending:
    """The delivery reports of one `send` call: an error per message index, if any."""

    __slots__ = ("messages", "reported", "errors", "seq", "local", "on_refused")

    def __init__(
        self,
        messages: Sequence[OutMessage],
        seq: int = 0,
        on_refused: Callable[[OutMessage, KafkaError], None] | None = None,
    ) -> None:
        self.messages = messages
        self.reported = 0
        self.errors: dict[int, KafkaError] = {}
        self.seq = seq  # the producer's sends are numbered: a wait knows whether later ones exist
        self.local: set[int] = set()  # refused here, never sent
        self.on_refused = on_refused  # told of each message a broker refused, as it is reported

    def report(self, index: int, err: KafkaError | None, _msg: Any) -> None:
        """The delivery callback of message `index`."""
        self.reported += 1
        if err is not None:
            self.errors[index] = err
            if self.on_refused is not None and _refused(err):
                self.on_refused(self.messages[index], err)

    def refuse(self, index: int, err: KafkaError) -> None:
        """Message `index` is refused before it leaves (too large, or refused before)."""
        self.local.add(index)
        self.reported += 1
        self.errors[index] = err

    @property
    def done(self) -> bool:
        """Every message has its report."""
        return self.reported >= len(self.messages)


RefusalKey = tuple[str, bytes | None, bytes | None, bytes | None, bytes | None]
REFUSALS_KEPT = 10_000  # exactly-once: refused messages remembered per worker


def refusal_key(message: OutMessage) -> RefusalKey:
    """What a refused message is remembered by: its topic, its record and what of it was
    left out (a dead letter's smaller forms are other messages)."""
    h = dict(message.headers)
    return (message.topic, h.get("source.partition"), h.get("source.offset"), h.get(OMITTED_HEADER), h.get(KEY_HEADER))


# refused for size: the broker judges a batch, so every message in it is refused
SIZE_REFUSALS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
# what librdkafka reports for messages it dropped from a transaction that failed
PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


def _refused(err: KafkaError) -> bool:
    return err.code() in RECORD_REFUSALS


class KafkaWriter:
    """Produces messages and waits until Kafka acknowledged each one. A message refused
    for what it is (size, validity) is tried again alone, so that only the messages that
    can't be written at all are reported back (`write` returns their indices); any other
    failure raises `DeliveryFailed`. Shared by the dataflow's sink, the Lambda and `ops`.

    `max_bytes` sizes the producer for the largest message it must take (the topics'
    `max.message.bytes`); `batch_bytes` keeps batches of several messages within the
    smallest topic it writes to."""

    def __init__(
        self,
        settings: Settings,
        client_id: str = "enrichment",
        max_bytes: int | None = None,
        batch_bytes: int | None = None,
        retries: Retries | None = None,
        transactional_id: str | None = None,
        topic_limits: Mapping[str, int] | None = None,
    ) -> None:
        self._settings = settings
        self._retries = retries or Retries(settings.retry_deadline_seconds)
        self._client_id = client_id
        conf = producer_config(settings)
        conf["client.id"] = client_id
        self.transactional = transactional_id is not None
        if transactional_id is not None:
            conf["transactional.id"] = transactional_id
            conf["transaction.timeout.ms"] = settings.transaction_timeout_ms
            # librdkafka: a message may not outlive the transaction it belongs to
            conf["message.timeout.ms"] = min(
                int(conf.get("message.timeout.ms", 300_000)), settings.transaction_timeout_ms
            )
        if max_bytes is not None:
            conf["message.max.bytes"] = min(max(max_bytes, 1000), LARGEST_PRODUCE_BYTES)
        if batch_bytes is not None:
            conf["batch.size"] = max(1, min(batch_bytes, conf["batch.size"]))
        # the broker connection's state for the dependency_up gauge: librdkafka retries on
        # its own and tells of a lost connection only through this callback
        conf["error_cb"] = self._on_error
        self._down = False
        self._conf = conf
        # exactly-once: a message the broker refuses fails the whole transaction (and the
        # records it covers would be read, and refused, again): what a topic can't take is
        # refused here, before it leaves, and re-routed like any refused message
        self._limits = dict(topic_limits) if topic_limits and transactional_id is not None else {}
        # exactly-once: messages a topic refused inside a transaction (which then aborts),
        # refused here when their records come again, so the outputs route them another way
        self._refusals: dict[RefusalKey, KafkaError] = {}
        # exactly-once: what brokers refused since the last round failed, from any of the
        # round's sends (the failed transaction purges the others' messages)
        self._noted: list[tuple[OutMessage, KafkaError]] = []
        # exactly-once: topics that refused a message without a key as invalid (compacted):
        # every later one is refused here, so a transaction isn't aborted for each
        self._keyless_refused: dict[str, KafkaError] = {}
        self._producer = Producer(conf)
        self._compressed: Producer | None = None
        self._prober: Producer | None = None
        self._sends = 0  # how many `send` calls so far
        self._timeout_s = settings.retry_deadline_seconds

    @property
    def producer(self) -> Producer:
        """The producer (the transactions of exactly-once mode drive it)."""
        return self._producer

    def renew(self) -> Producer:
        """A new producer in place of one stuck in a call that never returns (exactly-once:
        the new one takes the transactional.id over, which fences the old one). The old
        producer is dropped, not closed: closing would wait on the stuck call."""
        self._producer = Producer(self._conf)
        return self._producer

    def write(self, messages: Sequence[OutMessage]) -> list[int]:
        """Send and wait; the indices of the messages refused even alone."""
        return self.wait(self.send(messages))

    def send(self, messages: Sequence[OutMessage]) -> Sending:
        """Hand every message to the producer (returns before Kafka acknowledges them)."""
        self._sends += 1
        sending = Sending(messages, self._sends, self._note if self.transactional else None)
        produce, poll, report = self._producer.produce, self._producer.poll, sending.report
        limits = self._limits
        refusals = self._refusals
        for i, m in enumerate(messages):
            if limits and self._too_large(m):
                sending.refuse(i, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
                continue
            if refusals:
                known = refusals.get(refusal_key(m))
                if known is None and m.key is None:
                    known = self._keyless_refused.get(m.topic)
                if known is not None:
                    sending.refuse(i, known)
                    continue
            on_delivery = partial(report, i)
            while True:
                try:
                    produce(m.topic, m.value, m.key, headers=m.headers, on_delivery=on_delivery)  # type: ignore[arg-type]
                    break
                except BufferError:  # local queue full: serve callbacks, then try again
                    poll(0.05)
                except KafkaException as exc:
                    err = exc.args[0]
                    if self.transactional and err.code() == KafkaError._STATE:
                        # the transaction already failed (a message before this one was
                        # refused): the rest is not sent; `wait` collects why, and the
                        # transactions abort the round
                        for j in range(i, len(messages)):
                            report(j, KafkaError(KafkaError._PURGE_QUEUE), None)
                        return sending
                    if not _refused(err):
                        raise
                    sending.refuse(i, err)  # over message.max.bytes: refused before leaving
                    break
        return sending

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT) and not self._down:
            self._down = True
            self._retries.dependency_up("kafka", False)

    def wait(self, sending: Sending) -> list[int]:
        """Wait for every report of `sending`; the indices refused even when sent alone."""
        self._await(self._producer, sending, later=sending.seq != self._sends)
        if self._down and len(sending.errors) < len(sending.messages):  # Kafka took some: it answers
            self._down = False
            self._retries.dependency_up("kafka", True)
        refused = sorted(sending.errors)
        if not refused:
            return []
        errors = sending.errors
        if self.transactional and self._noted:
            # a broker refused messages of the round (of this send or another): the
            # transaction can only abort now, and librdkafka purges what was queued behind
            noted, self._noted = self._noted, []
            self._remember(noted)
        others = [(i, errors[i]) for i in refused if not _refused(errors[i])]
        if others:
            first = others[0][1]
            failure = DeliveryFailed(
                f"{len(others)} of {len(sending.messages)} message(s) not delivered, first: "
                f"{sending.messages[others[0][0]].topic}: {first}",
                first.code(),
                retriable=all(error_kind(err) is Kind.RETRIABLE or err.code() in PURGED for _, err in others),
            )
            if self.transactional and failure.retriable:
                # the messages' timeout is bounded by the transaction's, and a transaction
                # that failed purges what it queued: the transactions abort the round and
                # read it again, until RETRY_DEADLINE_SECONDS
                raise failure
            raise self._retries.gave_up(failure)
        if self.transactional:
            return refused
        # a refused batch fails every message in it: find the ones that fail on their own
        return [i for i in refused if self.send_alone(sending.messages[i]) is not None]

    def _remember(self, refused: Sequence[tuple[OutMessage, KafkaError]]) -> None:
        """Exactly-once: remember what the broker refused in the transaction and raise
        `RecordsRefused`. Not the messages refused only for sharing a batch with an invalid
        one; nor those refused for size, which the broker judges by the batch: the topics'
        limits are read again instead (`learn_limits`), so that each message too large
        alone is refused here and batches stay within the limits."""
        sizes = False
        for message, err in refused:
            if err.code() in SIZE_REFUSALS:
                sizes = True
            elif err.code() != KafkaError._INVALID_DIFFERENT_RECORD:
                self._keep(message, err)
        first_message, first = refused[0]
        failure = RecordsRefused(
            f"{len(refused)} message(s) refused inside the transaction, first: {first_message.topic}: {first}",
            first.code(),
        )
        failure.sizes = sizes
        raise failure

    def _note(self, message: OutMessage, err: KafkaError) -> None:
        self._noted.append((message, err))

    def learn_limits(self) -> None:
        """Read the topics' `max.message.bytes` again (lowered under the running flow) and
        size this writer's checks and batches by them; the new producer `renew` makes takes
        the new batch size."""
        if not self._limits:
            return
        try:
            found = max_message_bytes(self._settings, sorted(self._limits))
        except Exception as exc:  # noqa: BLE001 - the limits seen at start stay in force
            log.warning("topic limits not read again", extra={"fields": {"error": str(exc)[:300]}})
            return
        if found != self._limits:
            log.info("topic limits changed under the flow", extra={"fields": {"before": self._limits, "now": found}})
        self._limits.update(found)
        self._conf["batch.size"] = max(1, min([int(self._conf["batch.size"]), *found.values()]))

    def send_alone(self, message: OutMessage, compressed: bool = False) -> KafkaError | None:
        """Produce one message in a batch of its own and wait for it: None when written,
        else why the topic refused it. `compressed` sends it through a zstd producer whose
        own size limit is librdkafka's ceiling, so that the broker judges the compressed size.

        Exactly-once: a refusal would leave the transaction nothing but abort, so the message
        is first tried on a probe producer of its own, in a transaction that always aborts;
        only what the probe got through goes into the real transaction."""
        if compressed and self.transactional:
            # a second producer can't join the transaction: in exactly-once mode a dead letter
            # too large for the failure topic goes without headers or value instead
            return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
        if self._limits and self._too_large(message):
            return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
        known = self._refusals.get(refusal_key(message)) if self._refusals else None
        if known is None and message.key is None:
            known = self._keyless_refused.get(message.topic)
        if known is not None:
            return known
        if self.transactional:
            refused = self._probe(message)
            if refused is not None:
                self._keep(message, refused)
                return refused
        producer = self._compressed_producer() if compressed else self._producer
        self._producer.flush(self._timeout_s)  # nothing else rides in its batch
        err = self._produce_alone(producer, message)
        if err is not None and self.transactional:
            self._remember([(message, err)])
        return err

    def _produce_alone(self, producer: Producer, message: OutMessage) -> KafkaError | None:
        """Produce `message` on `producer` and wait for it: None, or why a topic refused it."""
        sending = Sending([message])
        try:
            producer.produce(
                message.topic,
                message.value,
                message.key,
                headers=message.headers,  # type: ignore[arg-type]
                on_delivery=partial(sending.report, 0),
            )
        except KafkaException as exc:
            if not _refused(exc.args[0]):
                raise
            return exc.args[0]  # type: ignore[no-any-return]
        self._await(producer, sending)
        err = sending.errors.get(0)
        if err is not None and not _refused(err):
            failure = DeliveryFailed(
                f"message not delivered: {message.topic}: {err}",
                err.code(),
                retriable=error_kind(err) is Kind.RETRIABLE or err.code() in PURGED,
            )
            if self.transactional and failure.retriable:
                # as in `wait`: a timed-out message in a transaction aborts the round, which
                # is read again until RETRY_DEADLINE_SECONDS
                raise failure
            raise self._retries.gave_up(failure)
        return err

    def _probe(self, message: OutMessage) -> KafkaError | None:
        """Whether the topic takes `message`, asked in a transaction of the probe producer
        that is then aborted (nothing of it is ever visible); after a refusal the probe
        producer is replaced, so that its next transaction starts clean."""
        if self._prober is None:
            conf = {**self._conf, "transactional.id": f"{self._conf['transactional.id']}.probe"}
            conf["client.id"] = f"{self._client_id}-probe"
            self._prober = Producer(conf)
            self._prober.init_transactions(self._timeout_s)
        prober = self._prober
        prober.begin_transaction()
        try:
            err = self._produce_alone(prober, message)
        finally:
            try:
                prober.abort_transaction(self._timeout_s)
            except KafkaException:
                self._prober = None
        if err is not None:
            self._prober = None
        return err

    def _keep(self, message: OutMessage, err: KafkaError) -> None:
        self._refusals[refusal_key(message)] = err
        if err.code() == KafkaError.INVALID_RECORD and message.key is None:
            self._keyless_refused[message.topic] = err
        while len(self._refusals) > REFUSALS_KEPT:
            del self._refusals[next(iter(self._refusals))]

    def _too_large(self, message: OutMessage) -> bool:
        limit = self._limits.get(message.topic)
        return limit is not None and record_size(message.key, message.value, message.headers) > limit

    def _compressed_producer(self) -> Producer:
        if self._compressed is None:
            conf = producer_config(self._settings)
            conf.update(
                {
                    "client.id": f"{self._client_id}-zstd",
                    "compression.type": "zstd",
                    "message.max.bytes": LARGEST_PRODUCE_BYTES,
                    "batch.num.messages": 1,
                }
            )
            self._compressed = Producer(conf)
        return self._compressed

    def _await(self, producer: Producer, sending: Sending, later: bool = False) -> None:
        """Serve delivery reports until `sending` has all of its. With `later` sends queued
        behind it, only poll (a flush would wait for them too); else flush, which sends at
        once what lingers."""
        deadline = time.monotonic() + self._timeout_s + 30
        wait, timeout = (producer.poll, 0.1) if later else (producer.flush, 1.0)
        while not sending.done:
            wait(timeout)
            if time.monotonic() > deadline:
                raise self._retries.gave_up(
                    DeliveryFailed(
                        f"{len(sending.messages) - sending.reported} of {len(sending.messages)} messages not "
                        f"acknowledged after {self._timeout_s:.0f}s"
                    )
                )

    def abandon(self) -> None:
        """Drop what the producers still hold (after a failed write: nothing of it may count
        later); `close` then returns at once."""
        for producer in (self._producer, self._compressed):
            if producer is not None:
                producer.purge(in_queue=True, in_flight=True, blocking=False)
                producer.flush(0)
        self._timeout_s = 0.0

    def close(self) -> None:
        """Deliver what is queued (up to the deadline) and let the producers go."""
        self._producer.flush(self._timeout_s)
        if self._compressed is not None:
            self._compressed.flush(self._timeout_s)
