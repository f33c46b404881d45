"""Kafka record sizes and the size rule of the three topics. Pure.

A topic's `max.message.bytes` bounds a record batch as the broker receives it. The pipeline
produces without compression, so a record that fits must fit uncompressed: its size is
counted here the way librdkafka counts it (`rd_kafka_msg_max_wire_size`: key, value,
headers and the most a record's varints take) plus the batch header, an upper bound that
is exact to a few bytes.

The rule (docs/operations.md, "Sizing the topics"): every record the input topic accepts must fit the
failure topic with the failure headers added, and the output topic with what enrichment
adds; and a value of `MAX_VALUE_BYTES` must fit the input topic at all. The flow checks it
at start (`flows.preflight`) and refuses to start when it does not hold. What still does
not fit at run time (a record that arrived compressed, a topic changed under the running
flow) is handled per record (`flows.delivery`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

BATCH_HEADER_BYTES = 61  # a v2 record batch's fixed header
RECORD_OVERHEAD_BYTES = 36  # librdkafka's RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD: the record's varints
HEADER_OVERHEAD_BYTES = 10  # two varints per header (name and value length), at most
# what the pipeline adds to a record, at most: the failure headers (error.message and
# error.field are cut to 1 KiB each; the rest are short) or the `customer` member,
# `enriched_at` and the source.* headers. A customer too big for that room still gets
# through as long as the message fits; one that doesn't makes `payload_too_large`.
ADDED_ROOM_BYTES = 8 * 1024
# the input topic the project creates leaves this much for producers' headers (and keys)
INPUT_HEADER_ROOM_BYTES = 64 * 1024


def record_size(key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes | None]]) -> int:
    """What a record alone in a batch counts against `max.message.bytes`, at most. Header
    names count in UTF-8 bytes (names here are valid strings: invalid ones are escaped)."""
    size = BATCH_HEADER_BYTES + RECORD_OVERHEAD_BYTES + (len(key) if key else 0) + (len(value) if value else 0)
    for name, hvalue in headers:
        size += HEADER_OVERHEAD_BYTES + (len(name) if name.isascii() else len(name.encode()))
        if hvalue:
            size += len(hvalue)
    return size


def value_fits(max_value_bytes: int) -> int:
    """The smallest `max.message.bytes` that takes a record with a value of this size."""
    return max_value_bytes + BATCH_HEADER_BYTES + RECORD_OVERHEAD_BYTES


@dataclass(frozen=True)
class TopicSize:
    """A topic's effective `max.message.bytes` and where it comes from."""

    setting: str  # INPUT_TOPIC, OUTPUT_TOPIC or FAILURE_TOPIC
    topic: str
    max_bytes: int
    broker_default: bool = False  # no topic override: the broker's message.max.bytes

    def describe(self) -> str:
        """`SETTING topic accepts N bytes`, for start-up errors."""
        origin = " (the broker's default)" if self.broker_default else ""
        return f"{self.setting} {self.topic} accepts {self.max_bytes} bytes{origin}"


@dataclass(frozen=True)
class TopicLimits:
    """The largest record each output topic accepts (`max.message.bytes`), read at start."""

    output: int
    failure: int


def size_problems(max_value_bytes: int, input_topic: TopicSize, output: TopicSize, failure: TopicSize) -> list[str]:
    """Each way the topics break the size rule, one readable sentence each."""
    problems: list[str] = []
    need_in = value_fits(max_value_bytes)
    if input_topic.max_bytes < need_in:
        problems.append(
            f"{input_topic.describe()}, needs {need_in} to take a value of MAX_VALUE_BYTES="
            f"{max_value_bytes} (lower MAX_VALUE_BYTES or raise the topic's max.message.bytes)"
        )
    need_out = max(input_topic.max_bytes, need_in) + ADDED_ROOM_BYTES
    for topic, what in ((failure, "the failure headers"), (output, "what enrichment adds")):
        if topic.max_bytes < need_out:
            problems.append(
                f"{topic.describe()}, needs {need_out} (what {input_topic.setting} {input_topic.topic} "
                f"accepts, or a value of MAX_VALUE_BYTES, plus {ADDED_ROOM_BYTES} for {what})"
            )
    return problems


def topic_sizes_to_create(max_value_bytes: int) -> tuple[int, int]:
    """(input, output and failure) `max.message.bytes` for topics the project creates."""
    input_size = value_fits(max_value_bytes) + INPUT_HEADER_ROOM_BYTES
    return input_size, input_size + ADDED_ROOM_BYTES
