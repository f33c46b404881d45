"""Kafka input and output on confluent-kafka, in place of Bytewax's bundled connector.

Input: one consumer per partition via `assign()` (no consumer group); the next offset to
read is the partition's recovery state, so a restart resumes from the last snapshot.
Consumer errors that may pass (a broker restarting) are logged and ridden out; fatal ones
raise. Before listing partitions the source runs the start-up checks with a timeout
(Bytewax's own KafkaSource asks for metadata without one and can hang forever). Headers
are read as bytes (`flows.kafka_headers`): a name that is not UTF-8 can't stop the source.

Output: `KafkaWriter`, an idempotent Producer (`acks=all`) with a delivery callback on
every message; a batch is done only when every message in it is acknowledged. A message a
topic refuses for what it is comes back to the caller (`flows.delivery` re-routes it);
any other delivery error raises, so the process fails loudly instead of losing a record.
(Bytewax's KafkaSink drops failed deliveries silently.)
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from flows.kafka_headers import READER
from flows.lifecycle import STOPPING
from flows.model import OutMessage, SourceRecord
from flows.retry import gave_up
from flows.settings import Settings
from flows.sizes import topic_sizes_to_create
from flows.stats import STATS

log = logging.getLogger(__name__)

STALL_CHECK_S = 5.0
IDLE_WAIT = dt.timedelta(milliseconds=5)  # an idle partition is polled again after this
PREFETCH_KBYTES = 4096  # per partition: a few source batches of ordinary records


def consumer_config(settings: Settings) -> dict[str, Any]:
    return {
        **settings.kafka_common(),
        "group.id": "enrichment-dataflow-unused",  # required by the client; no group is joined
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": settings.stop_at_end,
        # prefetch per partition: a few source batches, not the 64 MiB default (memory stays
        # flat), but at least two of the largest records, so large records stream
        "queued.max.messages.kbytes": max(PREFETCH_KBYTES, 2 * settings.max_value_bytes // 1024 + 64),
        # a full prefetch queue makes librdkafka wait this long before fetching again (its
        # default, 1 s, starves a stream of large records that fill the queue in a few)
        "fetch.queue.backoff.ms": 5,
        "fetch.wait.max.ms": 50,
        "socket.keepalive.enable": True,
        # only when the resume position is gone (retention deleted it while the flow was
        # down): start from the oldest record kept, never skip to the end
        "auto.offset.reset": "earliest",
    }


def producer_config(settings: Settings) -> dict[str, Any]:
    return {
        **settings.kafka_common(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "compression.type": "none",
        # Java clients' default, so keyed records land where other producers put them
        "partitioner": "murmur2_random",
        # the writer sets these from the topics' sizes; this default fits the topics the
        # project creates (flows.sizes)
        "message.max.bytes": topic_sizes_to_create(settings.max_value_bytes)[1],
        "batch.size": 1_000_000,
        # librdkafka keeps retrying a delivery until this expires: the same deadline as
        # every other dependency; past it the sink raises and the process exits
        "message.timeout.ms": int(settings.retry_deadline_seconds * 1000),
    }


class _InputPartition(StatefulSourcePartition[SourceRecord, int]):
    def __init__(self, settings: Settings, topic: str, partition: int, resume: int | None) -> None:
        self._consumer = Consumer(consumer_config(settings))
        self._topic, self._partition = topic, partition
        self._next = OFFSET_BEGINNING if resume is None else resume
        self._consumer.assign([TopicPartition(topic, partition, self._next)])
        self._batch_size = settings.source_batch_size
        self._where = f"{topic}:{partition}"
        self._eof = False
        self._awake: dt.datetime | None = None
        self._last_data = self._last_check = time.monotonic()

    def _check_stalled(self) -> None:
        """Seen here once in a while after a broker restart: the consumer of an assigned
        partition fetches nothing any more although records wait behind its position, and
        reports no error. When a partition has been idle for STALL_CHECK_S, compare the
        position with the broker's end offset and, if records wait, assign it afresh at the
        position (nothing is skipped or read twice: the position is our own)."""
        now = time.monotonic()
        if now - self._last_data < STALL_CHECK_S or now - self._last_check < STALL_CHECK_S:
            return
        self._last_check = now
        tp = TopicPartition(self._topic, self._partition)
        try:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
        except KafkaException:
            return  # the broker is away: librdkafka reconnects by itself
        waiting = high > self._next if self._next >= 0 else high > low
        if waiting:
            log.warning("kafka partition stalled, assigning it again", extra={"fields": {
                "where": self._where, "position": self._next, "end_offset": high}})
            self._consumer.unassign()
            self._consumer.assign([TopicPartition(self._topic, self._partition, self._next)])
            self._last_data = now

    def next_batch(self) -> list[SourceRecord]:
        read_headers = READER.read
        if self._eof or STOPPING.is_set():
            raise StopIteration
        msgs = self._consumer.consume(self._batch_size, 0)
        batch: list[SourceRecord] = []
        append = batch.append
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = True
                    break
                if err.fatal() or not (err.retriable() or err.code() in _TRANSIENT):
                    raise KafkaException(err)
                log.warning("kafka consumer error, retrying", extra={"fields": {
                    "where": self._where, "error": str(err)}})
                continue
            headers, header_error = read_headers(msg)
            append(SourceRecord(msg.topic(), msg.partition(), msg.offset(),  # type: ignore[arg-type]
                                msg.timestamp()[1], msg.key(), msg.value(), headers, header_error))
        if batch:
            self._next = batch[-1].offset + 1
            STATS.add_input(len(batch))
            self._awake = None
            self._last_data = time.monotonic()
        else:
            self._check_stalled()
            self._awake = dt.datetime.now(dt.UTC) + IDLE_WAIT
        return batch

    def next_awake(self) -> dt.datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._next

    def close(self) -> None:
        self._consumer.close()


_TRANSIENT = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
                        KafkaError._RESOLVE, KafkaError.NOT_LEADER_FOR_PARTITION,
                        KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART})


class KafkaInput(FixedPartitionedSource[SourceRecord, int]):
    """Every partition of the input topic; `preflight` runs (and may exit) before listing."""

    def __init__(self, settings: Settings, list_partitions: Callable[[], list[int]]) -> None:
        self.settings = settings
        self._list_partitions = list_partitions

    def list_parts(self) -> list[str]:
        return [f"{p}-{self.settings.input_topic}" for p in self._list_partitions()]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _InputPartition:
        idx, topic = for_part.split("-", 1)
        return _InputPartition(self.settings, topic, int(idx), resume_state)


class DeliveryFailed(RuntimeError):
    """Kafka did not acknowledge a message: raised so nothing is lost silently."""


# What a broker says about one record (or the batch it was in) that no retry will change:
# too large for the topic, or invalid for it (a record without a key for a compacted
# topic). Anything else that librdkafka gives up on is a dependency failure.
RECORD_REFUSALS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD,
                             KafkaError.INVALID_MSG, KafkaError.RECORD_LIST_TOO_LARGE})
LARGEST_PRODUCE_BYTES = 1_000_000_000  # librdkafka's ceiling for message.max.bytes


class Sending:
    """The delivery reports of one `send` call: an error per message index, if any."""

    __slots__ = ("messages", "reported", "errors")

    def __init__(self, messages: Sequence[OutMessage]) -> None:
        self.messages = messages
        self.reported = 0
        self.errors: dict[int, KafkaError] = {}

    def report(self, index: int, err: KafkaError | None, _msg: Any) -> None:
        self.reported += 1
        if err is not None:
            self.errors[index] = err

    @property
    def done(self) -> bool:
        return self.reported >= len(self.messages)


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

    def __init__(self, settings: Settings, client_id: str = "enrichment", max_bytes: int | None = None,
                 batch_bytes: int | None = None) -> None:
        self._settings = settings
        self._client_id = client_id
        conf = producer_config(settings)
        conf["client.id"] = client_id
        if max_bytes is not None:
            conf["message.max.bytes"] = min(max(max_bytes, 1000), LARGEST_PRODUCE_BYTES)
        if batch_bytes is not None:
            conf["batch.size"] = max(1, min(batch_bytes, conf["batch.size"]))
        self._producer = Producer(conf)
        self._compressed: Producer | None = None
        self._timeout_s = settings.retry_deadline_seconds

    def write(self, messages: Sequence[OutMessage]) -> list[int]:
        """Send and wait; the indices of the messages refused even alone."""
        return self.wait(self.send(messages))

    def send(self, messages: Sequence[OutMessage]) -> Sending:
        """Hand every message to the producer (returns before Kafka acknowledges them)."""
        sending = Sending(messages)
        produce, poll, report = self._producer.produce, self._producer.poll, sending.report
        for i, m in enumerate(messages):
            on_delivery = partial(report, i)
            while True:
                try:
                    produce(m.topic, m.value, m.key, headers=m.headers, on_delivery=on_delivery)  # type: ignore[arg-type]
                    break
                except BufferError:  # local queue full: serve callbacks, then try again
                    poll(0.05)
                except KafkaException as exc:
                    err = exc.args[0]
                    if not _refused(err):
                        raise
                    report(i, err, None)  # over message.max.bytes: refused before leaving
                    break
        return sending

    def wait(self, sending: Sending) -> list[int]:
        """Wait for every report of `sending`; the indices refused even when sent alone."""
        self._await(self._producer, sending)
        refused = sorted(sending.errors)
        if not refused:
            return []
        others = [(i, sending.errors[i]) for i in refused if not _refused(sending.errors[i])]
        if others:
            raise gave_up(DeliveryFailed(f"{len(others)} of {len(sending.messages)} message(s) not delivered, "
                                         f"first: {sending.messages[others[0][0]].topic}: {others[0][1]}"))
        # a refused batch fails every message in it: find the ones that fail on their own
        return [i for i in refused if self.send_alone(sending.messages[i]) is not None]

    def send_alone(self, message: OutMessage, compressed: bool = False) -> KafkaError | None:
        """Produce one message in a batch of its own and wait for it: None when written,
        else why the topic refused it. `compressed` sends it through a zstd producer whose
        own size limit is librdkafka's ceiling, so that the broker judges the compressed size."""
        producer = self._compressed_producer() if compressed else self._producer
        self._producer.flush(self._timeout_s)  # nothing else rides in its batch
        sending = Sending([message])
        try:
            producer.produce(message.topic, message.value, message.key, headers=message.headers,  # type: ignore[arg-type]
                             on_delivery=partial(sending.report, 0))
        except KafkaException as exc:
            if not _refused(exc.args[0]):
                raise
            return exc.args[0]  # type: ignore[no-any-return]
        self._await(producer, sending)
        err = sending.errors.get(0)
        if err is not None and not _refused(err):
            raise gave_up(DeliveryFailed(f"message not delivered: {message.topic}: {err}"))
        return err

    def _compressed_producer(self) -> Producer:
        if self._compressed is None:
            conf = producer_config(self._settings)
            conf.update({"client.id": f"{self._client_id}-zstd", "compression.type": "zstd",
                         "message.max.bytes": LARGEST_PRODUCE_BYTES, "batch.num.messages": 1})
            self._compressed = Producer(conf)
        return self._compressed

    def _await(self, producer: Producer, sending: Sending) -> None:
        deadline = time.monotonic() + self._timeout_s + 30
        while not sending.done:
            producer.flush(1.0)
            if time.monotonic() > deadline:
                raise gave_up(DeliveryFailed(f"{len(sending.messages) - sending.reported} of "
                                             f"{len(sending.messages)} messages not acknowledged after "
                                             f"{self._timeout_s:.0f}s"))

    def close(self) -> None:
        self._producer.flush(self._timeout_s)
        if self._compressed is not None:
            self._compressed.flush(self._timeout_s)
