"""flows.adapters.kafka.writer with a fake producer: a message sent alone that times out
(the broker slow past the transaction's timeout) is a retriable failure in exactly-once
mode, for the transactions to abort and read again, not a give-up; at-least-once gives up
only through the retry hook, as for any delivery error it can't ride out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError

from flows.adapters.kafka import writer as writer_module
from flows.adapters.kafka.writer import KafkaWriter
from flows.core.model import OutMessage
from flows.errors import DeliveryFailed
from flows.retry import Retries
from flows.settings import Settings

SETTINGS = Settings.from_env({"INPUT_TOPIC": "in", "RETRY_DEADLINE_SECONDS": "2"})
MESSAGE = OutMessage("out", b"k", b"v", [("source.partition", b"0"), ("source.offset", b"7")])


class TimingOutProducer:
    """Every message produced is reported timed out at the next flush."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.pending: list[Callable[..., None]] = []

    def init_transactions(self, timeout: float) -> None: ...
    def begin_transaction(self) -> None: ...
    def abort_transaction(self, timeout: float) -> None: ...

    def produce(self, topic: str, value: Any, key: Any, headers: Any, on_delivery: Callable[..., None]) -> None:
        self.pending.append(on_delivery)

    def flush(self, timeout: float = 0) -> int:
        pending, self.pending = self.pending, []
        for report in pending:
            report(KafkaError(KafkaError._MSG_TIMED_OUT), None)
        return 0

    poll = flush


@pytest.fixture
def timing_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "Producer", TimingOutProducer)


def retries(gave_up: list[BaseException]) -> Retries:
    r = Retries(2)
    r.give_up = gave_up.append
    return r


@pytest.mark.usefixtures("timing_out")
def test_exactly_once_a_message_alone_that_times_out_is_retriable_and_not_given_up() -> None:
    gave_up: list[BaseException] = []
    writer = KafkaWriter(SETTINGS, retries=retries(gave_up), transactional_id="enrichment-0")
    with pytest.raises(DeliveryFailed) as raised:
        writer.send_alone(MESSAGE)
    assert raised.value.retriable
    assert "Local: Message timed out" in str(raised.value)
    assert gave_up == []


@pytest.mark.usefixtures("timing_out")
def test_at_least_once_a_message_alone_that_times_out_gives_up() -> None:
    gave_up: list[BaseException] = []
    writer = KafkaWriter(SETTINGS, retries=retries(gave_up))
    with pytest.raises(DeliveryFailed) as raised:
        writer.send_alone(MESSAGE)
    assert gave_up == [raised.value]
