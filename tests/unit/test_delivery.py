"""flows.delivery with a fake writer that refuses what a topic would: the re-routing rules.
(The same on the real broker: tests/integration/test_sizes.py.)"""

import datetime as dt
from collections.abc import Sequence

import pytest

from flows import route
from flows.delivery import Delivery
from flows.kafka_io import DeliveryFailed
from flows.model import Code, Failure, HistoryRow, OutMessage, Routed, Stage
from flows.sizes import TopicLimits, record_size

from .fakes import ALICE, GOOD, record
from .test_route import decoded

NOW = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


class FakeWriter:
    """Takes a message when it fits its topic's limit (compressed: when `compressible`)."""

    def __init__(self, limits: dict[str, int], compressible: bool = False) -> None:
        self.limits = limits
        self.compressible = compressible
        self.written: list[OutMessage] = []
        self.compressed: list[OutMessage] = []

    def _fits(self, m: OutMessage) -> bool:
        return record_size(m.key, m.value, m.headers) <= self.limits[m.topic]

    def send(self, messages: Sequence[OutMessage]) -> list[OutMessage]:
        return list(messages)

    def wait(self, sending: list[OutMessage]) -> list[int]:
        refused = [i for i, m in enumerate(sending) if not self._fits(m)]
        self.written += [m for i, m in enumerate(sending) if i not in refused]
        return refused

    def send_alone(self, m: OutMessage, compressed: bool = False) -> object:
        if compressed and self.compressible:
            self.compressed.append(m)
            return None
        if not compressed and self._fits(m):
            self.written.append(m)
            return None
        return "MSG_SIZE_TOO_LARGE"

    def close(self) -> None:
        pass


class FakeHistory:
    def __init__(self) -> None:
        self.rows: list[HistoryRow] = []

    def write(self, rows: Sequence[HistoryRow]) -> None:
        self.rows += rows

    def close(self) -> None:
        pass


def ok() -> Routed:
    return route.success(decoded(), route.customer_fragment(ALICE), "out", NOW, "t")


def dead(size: int, offset: int = 5) -> Routed:
    rec = record(b"x" * size, offset=offset)
    return route.failure(Failure(rec, Code.INVALID_JSON, Stage.DECODE, "not JSON"), "dlq", NOW)


def delivery(writer: FakeWriter, history: FakeHistory, limits: TopicLimits | None = None) -> Delivery:
    return Delivery(writer, history, "dlq", limits, wallclock=lambda: NOW)  # type: ignore[arg-type]


def test_an_enriched_message_the_output_topic_refuses_becomes_a_dead_letter_and_its_row_says_so() -> None:
    writer, history = FakeWriter({"out": 300, "dlq": 10_000}), FakeHistory()
    good, bad = ok(), dead(10)
    delivery(writer, history).write([good, bad])
    assert [m.topic for m in writer.written] == ["dlq", "dlq"]
    rerouted = writer.written[1]
    headers = dict(rerouted.headers)
    assert headers["error.code"] == b"payload_too_large" and b"the output topic out refused" in headers["error.message"]
    assert rerouted.value == GOOD and rerouted.key == b"k"
    # the first row, then its correction: the upsert of the same row, written after
    assert [(h.source_offset, h.status, h.error_code) for h in history.rows] == [
        (42, "enriched", None), (5, "failed", "invalid_json"), (42, "failed", "payload_too_large")]
    assert history.rows[2].event_id == "e1" and history.rows[2].output_topic == "dlq"


def test_a_dead_letter_too_large_goes_compressed_then_without_headers_then_without_its_value() -> None:
    limits = TopicLimits(output=10_000, failure=1_000)
    writer, history = FakeWriter({"out": 10_000, "dlq": 1_000}, compressible=True), FakeHistory()
    delivery(writer, history, limits).write([dead(5000), dead(10, offset=6)])
    assert [len(m.value or b"") for m in writer.compressed] == [5000]
    assert [len(m.value or b"") for m in writer.written] == [10]
    writer = FakeWriter({"out": 10_000, "dlq": 2_000})
    big_headers = route.failure(Failure(record(b"v" * 100, headers=[("h", b"x" * 3000)]), Code.INVALID_JSON,
                                        Stage.DECODE, "m"), "dlq", NOW)
    delivery(writer, history, TopicLimits(output=10_000, failure=2_000)).write([big_headers])
    [kept] = writer.written
    assert kept.value == b"v" * 100 and dict(kept.headers)["error.omitted"] == b"headers"
    writer = FakeWriter({"out": 10_000, "dlq": 1_000})
    delivery(writer, history, limits).write([dead(5000)])
    [stub] = writer.written
    assert stub.value is None and dict(stub.headers)["error.omitted"] == b"value,headers"


def test_a_topic_that_refuses_even_the_stub_is_a_dependency_failure() -> None:
    writer = FakeWriter({"out": 10_000, "dlq": 100})
    with pytest.raises(DeliveryFailed, match="refuses even a dead letter without value"):
        delivery(writer, FakeHistory()).write([dead(5000)])
