"""flows.adapters.kafka.outputs with a fake KafkaWriter that refuses what a topic would: the
re-routing and fallback rules (on the real broker: tests/integration/test_sizes.py)."""

import datetime as dt
from collections.abc import Sequence

import pytest

from flows.adapters.kafka.outputs import DeadLetters, EnrichedMessages
from flows.app.outputs import Delivery, Output, enriched, everything, failed
from flows.core import outcome
from flows.core.model import Code, Failure, HistoryRow, Outcome, OutMessage, Stage
from flows.core.sizes import record_size
from flows.errors import DeliveryFailed
from flows.retry import Retries

from .fakes import ALICE_MEMBER, GOOD, record
from .test_outcome import decoded

NOW = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


class FakeKafka:
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


class FakeHistory:
    def __init__(self) -> None:
        self.rows: list[HistoryRow] = []
        self._taken: list[HistoryRow] = []

    def write(self, items: Sequence[Outcome]) -> None:
        self._taken += [r.history for r in items]

    def discard(self) -> None:

        pass

    def flush(self) -> list[Outcome]:
        self.rows += self._taken
        self._taken = []
        return []

    def close(self) -> None:
        pass


def ok() -> Outcome:
    return outcome.success(decoded(), [ALICE_MEMBER], "out", NOW, "t")


def dead(size: int, offset: int = 5) -> Outcome:
    rec = record(b"x" * size, offset=offset)
    return outcome.failure(Failure(rec, Code.INVALID_JSON, Stage.DECODE, "not JSON"), "dlq", NOW)


def delivery(kafka: FakeKafka, history: FakeHistory, failure_limit: int | None = None) -> Delivery:
    retries = Retries(10)
    return Delivery(
        [
            (Output("history", everything, lambda _: history), history),
            (Output("enriched", enriched, lambda _: None), EnrichedMessages(kafka, "dlq", wallclock=lambda: NOW)),  # type: ignore[arg-type, return-value]
            (Output("failed", failed, lambda _: None), DeadLetters(kafka, "dlq", failure_limit, retries)),  # type: ignore[arg-type, return-value]
        ]
    )


def test_an_enriched_message_the_output_topic_refuses_becomes_a_dead_letter_and_its_row_says_so() -> None:
    kafka, history = FakeKafka({"out": 300, "dlq": 10_000}), FakeHistory()
    delivery(kafka, history).write([ok(), dead(10)])
    assert [m.topic for m in kafka.written] == ["dlq", "dlq"]
    rerouted = kafka.written[1]
    headers = dict(rerouted.headers)
    assert headers["error.code"] == b"payload_too_large" and b"the output topic out refused" in headers["error.message"]
    assert rerouted.value == GOOD and rerouted.key == b"k"
    # the first row, then its correction: the upsert of the same row, written after
    assert [(h.source_offset, h.status, h.error_code) for h in history.rows] == [
        (42, "enriched", None),
        (5, "failed", "invalid_json"),
        (42, "failed", "payload_too_large"),
    ]
    assert history.rows[2].event_id == "e1" and history.rows[2].output_topic == "dlq"


def test_a_dead_letter_too_large_goes_compressed_then_without_headers_then_without_its_value() -> None:
    kafka, history = FakeKafka({"out": 10_000, "dlq": 1_000}, compressible=True), FakeHistory()
    delivery(kafka, history, failure_limit=1_000).write([dead(5000), dead(10, offset=6)])
    assert [len(m.value or b"") for m in kafka.compressed] == [5000]
    assert [len(m.value or b"") for m in kafka.written] == [10]
    kafka = FakeKafka({"out": 10_000, "dlq": 2_000})
    big_headers = outcome.failure(
        Failure(record(b"v" * 100, headers=[("h", b"x" * 3000)]), Code.INVALID_JSON, Stage.DECODE, "m"), "dlq", NOW
    )
    delivery(kafka, history, failure_limit=2_000).write([big_headers])
    [kept] = kafka.written
    assert kept.value == b"v" * 100 and dict(kept.headers)["error.omitted"] == b"headers"
    kafka = FakeKafka({"out": 10_000, "dlq": 1_000})
    delivery(kafka, history, failure_limit=1_000).write([dead(5000)])
    [stub] = kafka.written
    assert stub.value is None and dict(stub.headers)["error.omitted"] == b"value,headers"


def test_a_topic_that_refuses_even_the_stub_is_a_dependency_failure() -> None:
    kafka = FakeKafka({"out": 10_000, "dlq": 100})
    with pytest.raises(DeliveryFailed, match="refuses every form of the dead letter"):
        delivery(kafka, FakeHistory()).write([dead(5000)])
