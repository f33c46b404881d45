"""flows.adapters.kafka.transactions and .group: the state machines of exactly-once mode,
with fakes for the producer and the consumer (the integration tests run them on the real
broker). A transaction commits the offsets after what was delivered; a refused commit
aborts and rewinds; a fenced producer gives up; a stuck call replaces the producer; lost
partitions abort; a retry wait never holds a transaction open; a failed write abandons;
drained partitions commit the consumer's position (past transaction markers)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from flows.adapters.kafka import transactions as tx
from flows.adapters.kafka.group import GroupReader
from flows.adapters.kafka.transactions import Transactions
from flows.core import outcome
from flows.core.model import Code, Failure, Outcome, Stage
from flows.errors import DeliveryFailed, DependencyUnavailable, RoundAborted
from flows.retry import Backoff, Kind, Retries
from flows.settings import Settings

from .fakes import FakeClock, record

NOW = __import__("datetime").datetime(2026, 1, 1, tzinfo=__import__("datetime").UTC)
SETTINGS = Settings.from_env(
    {"INPUT_TOPIC": "in", "RETRY_DEADLINE_SECONDS": "2", "COMMIT_INTERVAL_MS": "100", "STOP_AT_END": "true"}
)


def out(partition: int, offset: int, epoch: int = 1) -> Outcome:
    rec = record(b"x", partition=partition, offset=offset, topic="in")
    rec = type(rec)(**{**{f: getattr(rec, f) for f in rec.__struct_fields__}, "epoch": epoch})
    return outcome.failure(Failure(rec, Code.INVALID_JSON, Stage.DECODE, "not JSON"), "dlq", NOW)


class FakeProducer:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.fail: dict[str, BaseException] = {}  # call -> raised once
        self.hang: set[str] = set()

    def _do(self, what: str, detail: str = "") -> None:
        self.log.append(f"{what}{detail}")
        if what in self.hang:
            threading.Event().wait(5)
        error = self.fail.pop(what, None)
        if error is not None:
            raise error

    def init_transactions(self, timeout: float) -> None:
        self._do("init")

    def begin_transaction(self) -> None:
        self._do("begin")

    def send_offsets_to_transaction(self, offsets: Sequence[Any], metadata: Any, timeout: float) -> None:
        self._do("offsets", " " + ",".join(f"{tp.partition}:{tp.offset}" for tp in offsets))

    def commit_transaction(self, timeout: float) -> None:
        self._do("commit")

    def abort_transaction(self, timeout: float) -> None:
        self._do("abort")


class FakeWriter:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.producer = FakeProducer(log)

    def renew(self) -> FakeProducer:
        self.log.append("renew")
        self.producer = FakeProducer(self.log)
        return self.producer


class FakeReader:
    """What Transactions asks of a GroupReader."""

    def __init__(self, log: list[str], owned: Sequence[int] = (0, 1)) -> None:
        self.log = log
        self.epochs = dict.fromkeys(owned, 1)
        self.listener: Any = None
        self.ends: dict[int, int] = {}
        self.group: dict[int, int] = {}

    def current(self, partition: int, epoch: int) -> bool:
        return self.epochs.get(partition) == epoch

    def group_metadata(self) -> str:
        return "meta"

    def committed(self, timeout: float) -> dict[int, int]:
        return dict(self.group)

    def rewind(self, committed: dict[int, int]) -> None:
        self.log.append(f"rewind {sorted(committed.items())}")
        self.epochs = {p: e + 1 for p, e in self.epochs.items()}

    def skippable(self, partition: int, done: int | None) -> int | None:
        end = self.ends.get(partition)
        return end if end is not None and (done is None or end > done) else None


def kafka_error(code: int, fatal: bool = False, retriable: bool = False) -> KafkaException:
    return KafkaException(KafkaError(code, "test", fatal=fatal, retriable=retriable))


class Rig:
    def __init__(self, owned: Sequence[int] = (0, 1)) -> None:
        self.log: list[str] = []
        self.gave_up: list[BaseException] = []
        self.clock = FakeClock()
        self.retries = Retries(2, give_up=self.gave_up.append)
        self.writer = FakeWriter(self.log)
        self.reader = FakeReader(self.log, owned)
        self.tx = Transactions(SETTINGS, self.writer, self.reader, self.retries, clock=self.clock)  # type: ignore[arg-type]
        self.log.clear()

    def round(self, *outs: Outcome) -> list[Outcome]:
        kept = self.tx.admit(outs)
        if kept:
            self.tx.begin()
            self.tx.delivered(kept)
        return kept


def test_offsets_after_the_delivered_records_commit_with_the_transaction_when_due() -> None:
    rig = Rig()
    assert rig.round(out(0, 5), out(1, 7), out(0, 6)) and rig.log == ["begin"]
    rig.tx.tick()
    assert rig.log == ["begin"], "not before the interval"
    rig.clock.now += 0.1
    rig.round(out(1, 8))
    assert rig.log == ["begin", "offsets 0:7,1:9", "commit"]
    assert rig.tx.finished("in", 0) is None, "nothing open after the commit"


def test_records_of_another_epoch_are_not_admitted() -> None:
    rig = Rig(owned=[0])
    assert rig.tx.admit([out(0, 1, epoch=2), out(1, 1)]) == []


def test_a_refused_commit_aborts_and_reads_again_from_what_this_member_committed() -> None:
    rig = Rig()
    rig.round(out(0, 5))
    rig.clock.now += 1
    rig.tx.tick()  # commits 0:6
    rig.round(out(0, 6), out(1, 2))
    rig.writer.producer.fail["commit"] = kafka_error(KafkaError.INVALID_PRODUCER_EPOCH)
    rig.clock.now += 1
    rig.tx.tick()
    assert rig.log[-3:] == ["commit", "abort", "rewind [(0, 6)]"]
    assert rig.tx.admit([out(0, 6)]) == [], "what was read before the rewind is dropped"


def test_a_fenced_producer_gives_up() -> None:
    rig = Rig()
    rig.round(out(0, 5))
    rig.writer.producer.fail["commit"] = kafka_error(KafkaError._FENCED, fatal=True)
    rig.clock.now += 1
    with pytest.raises(DeliveryFailed, match="fenced"):
        rig.tx.tick()
    assert len(rig.gave_up) == 1


def test_a_stuck_commit_replaces_the_producer_and_asks_the_group_what_was_committed(monkeypatch) -> None:
    monkeypatch.setattr(tx, "STUCK_GRACE_S", 0.05)
    monkeypatch.setattr(tx, "CALL_TIMEOUT_S", 0.05)
    rig = Rig()
    rig.tx = Transactions(SETTINGS, rig.writer, rig.reader, rig.retries, clock=rig.clock)  # type: ignore[arg-type]
    rig.round(out(0, 5))
    rig.writer.producer.hang.add("commit")
    rig.reader.group = {0: 6}
    rig.clock.now += 1
    rig.tx.tick()
    assert rig.log[-4:] == ["commit", "renew", "init", "rewind [(0, 6)]"]


def test_lost_partitions_abort_the_open_transaction_and_revoked_ones_commit_first() -> None:
    rig = Rig()
    rig.round(out(0, 5))
    rig.tx.revoked([1])
    assert rig.log == ["begin", "offsets 0:6", "commit"]
    rig.round(out(0, 6))
    rig.tx.lost([0])
    assert rig.log[-2:] == ["abort", "rewind []"], "nothing of a lost partition may commit"


def test_no_transaction_stays_open_across_a_retry_wait() -> None:
    """A dependency failing while a transaction is open: the delivered rounds in it commit
    before the wait; a round half written into it is aborted and dropped."""
    rig = Rig()
    rig.round(out(0, 5))
    calls = iter([ConnectionError("down"), "ok"])

    def flaky() -> str:
        value = next(calls)
        if isinstance(value, BaseException):
            raise value
        return value

    fast = Backoff(2, base_s=0.001, cap_s=0.001)
    assert rig.retries.call("cassandra write", flaky, lambda _: Kind.RETRIABLE, fast) == "ok"
    assert rig.log == ["begin", "offsets 0:6", "commit"], "committed before waiting"

    kept = rig.tx.admit([out(0, 6)])
    rig.tx.begin()  # the round's messages are going into the transaction...
    calls = iter([ConnectionError("down"), "ok"])
    with pytest.raises(RoundAborted):
        rig.retries.call("cassandra write", flaky, lambda _: Kind.RETRIABLE, fast)
    assert rig.log[-2:] == ["abort", "rewind [(0, 6)]"] and kept


def test_kafka_failing_a_round_aborts_and_reads_again_until_the_deadline() -> None:
    rig = Rig()
    rig.round(out(0, 5))
    timeout = DeliveryFailed("message timed out", KafkaError._MSG_TIMED_OUT, retriable=True)
    assert rig.tx.failed(timeout) is True
    assert rig.log[-2:] == ["abort", "rewind []"]
    assert rig.tx.failed(RuntimeError("bug")) is False
    rig.clock.now += 3  # past RETRY_DEADLINE_SECONDS=2 since the first failed round
    with pytest.raises(DependencyUnavailable):
        rig.tx.failed(timeout)
    assert len(rig.gave_up) == 1


def test_closing_after_a_failed_write_aborts_and_never_commits() -> None:
    rig = Rig()
    rig.round(out(0, 5))
    rig.tx.abandon()
    rig.tx.revoked([0, 1])  # the consumer leaves the group after the output step closed
    assert rig.log == ["begin", "abort"]


def test_drained_partitions_commit_the_consumers_position_past_transaction_markers() -> None:
    rig = Rig()
    rig.round(out(0, 5))
    rig.reader.ends[0] = 8  # read to its end at 8: 6 and 7 are markers / aborted records
    rig.clock.now += 1
    rig.tx.tick()
    assert rig.log == ["begin", "offsets 0:8", "commit"]
    rig.reader.ends[1] = 3  # nothing read of partition 1, and its end moved past markers
    rig.tx.tick()
    assert rig.log[-3:] == ["begin", "offsets 1:3", "commit"], "a transaction opened for the offsets alone"
    rig.reader.ends = {0: 8, 1: 3}
    rig.tx.tick()
    assert rig.log[-1] == "commit" and len(rig.log) == 6, "nothing more to commit"


# --------------------------------------------------------------- the group member


class Msg:
    def __init__(self, partition: int, offset: int, eof: bool = False) -> None:
        self._p, self._o, self._eof = partition, offset, eof

    def error(self) -> KafkaError | None:
        return KafkaError(KafkaError._PARTITION_EOF) if self._eof else None

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def topic(self) -> str:
        return "in"

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def headers(self) -> None:
        return None


class FakeConsumer:
    def __init__(self) -> None:
        self.queue: list[Msg] = []
        self.seeks: list[tuple[int, int]] = []
        self.partitions = [0, 1, 2]
        self.group: dict[int, int] = {}
        self.high: dict[int, int] = {}
        self.callbacks: dict[str, Any] = {}

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def consume(self, n: int, timeout: float) -> list[Msg]:
        batch, self.queue = self.queue, []
        return batch

    def seek(self, tp: Any) -> None:
        self.seeks.append((tp.partition, tp.offset))

    def list_topics(self, topic: str, timeout: float) -> Any:
        parts = {p: None for p in self.partitions}
        return type("M", (), {"topics": {topic: type("T", (), {"partitions": parts})()}})()

    def committed(self, tps: list[Any], timeout: float) -> list[Any]:
        from confluent_kafka import TopicPartition

        return [TopicPartition("in", tp.partition, self.group.get(tp.partition, -1001)) for tp in tps]

    def get_watermark_offsets(self, tp: Any, timeout: float = 1, cached: bool = False) -> tuple[int, int]:
        return (0, self.high.get(tp.partition, 0))


def member(stop_at_end: bool = True) -> tuple[GroupReader, FakeConsumer]:
    from confluent_kafka import TopicPartition

    consumer = FakeConsumer()
    settings = Settings.from_env({"INPUT_TOPIC": "in", "STOP_AT_END": "true" if stop_at_end else "false"})
    reader = GroupReader(settings, "c", consumer=consumer)
    consumer.callbacks["on_assign"](consumer, [TopicPartition("in", 0), TopicPartition("in", 1)])
    return reader, consumer


def test_records_carry_their_assignment_epoch_and_a_rewind_starts_a_new_one() -> None:
    reader, consumer = member()
    consumer.queue = [Msg(0, 4), Msg(1, 9)]
    batch = reader.next_batch()
    assert all(reader.current(r.partition, r.epoch) for r in batch)
    reader.rewind({0: 3})
    assert consumer.seeks == [(0, 3), (1, 9)], "a partition never committed is read from its first record"
    assert not any(reader.current(r.partition, r.epoch) for r in batch)


def test_stop_at_end_waits_for_the_partitions_other_members_hold() -> None:
    """Drained here is not drained: the partitions of a member that was killed (its session
    not yet expired) or is still working must be committed to their end too."""
    reader, consumer = member()
    consumer.queue = [Msg(0, 5), Msg(0, 6, eof=True), Msg(1, 0, eof=True)]
    reader.next_batch()
    consumer.high = {0: 6, 2: 40}
    consumer.group = {2: 12}
    assert not reader.done, "partition 2 (another member's) has 28 records left"
    consumer.group = {2: 40}
    reader._topic_checked = 0  # the check runs at most once a second
    assert reader.done


def test_a_member_owning_nothing_is_not_done_while_records_wait() -> None:
    from confluent_kafka import TopicPartition

    reader, consumer = member()
    consumer.callbacks["on_revoke"](consumer, [TopicPartition("in", 0), TopicPartition("in", 1)])
    consumer.high = {0: 10}
    assert not reader.done
    consumer.group = {0: 10}
    reader._topic_checked = 0
    assert reader.done


def test_a_drained_partition_offers_its_position_once_every_record_read_is_covered() -> None:
    reader, consumer = member(stop_at_end=False)
    consumer.queue = [Msg(0, 5), Msg(0, 8, eof=True), Msg(1, 3, eof=True)]
    reader.next_batch()
    assert reader.skippable(0, 5) is None, "record 5 is not covered yet"
    assert reader.skippable(0, 6) == 8, "covered: the markers at 6 and 7 are skipped"
    assert reader.skippable(1, None) == 3, "nothing read, only markers"
    assert reader.skippable(1, 3) is None, "nothing past what is committed"
    assert not reader.done, "without STOP_AT_END the input never ends"


def test_a_pause_of_the_process_is_noticed_once() -> None:
    from flows.pause import PauseWatch

    clock = FakeClock(100.0)
    watch = PauseWatch(3.0, clock=clock)
    clock.now += 1
    watch.tick()
    assert watch.paused_since(100.0) is None, "a tick a second apart is no pause"
    clock.now += 9  # SIGSTOP: nothing ticked for 9 s
    assert watch.paused_since(100.0) == 9
    assert watch.paused_since(clock.now) is None, "asked again from now: nothing new"


def test_after_a_pause_a_member_writes_nothing_it_read_before() -> None:
    """A zombie: paused past its session timeout, its partitions may be another member's;
    its next batch is dropped (no message, no history row), its transaction aborted and its
    partitions read again from the committed offsets (or lost at the next rebalance)."""
    from flows.pause import PauseWatch

    rig = Rig()
    watch = PauseWatch(3.0, clock=rig.clock)
    rig.tx = Transactions(SETTINGS, rig.writer, rig.reader, rig.retries, clock=rig.clock, pauses=watch)  # type: ignore[arg-type]
    rig.log.clear()
    rig.round(out(0, 5))
    rig.clock.now += 10  # frozen
    assert rig.tx.admit([out(0, 6)]) == []
    assert rig.log[-2:] == ["abort", "rewind []"]
    assert rig.tx.admit([out(0, 6, epoch=2)]), "after the rewind, records read again are written"


def test_a_fatal_error_that_is_not_a_fence_replaces_the_producer() -> None:
    """After a broker restart the coordinator may answer a commit with INVALID_TXN_STATE,
    which librdkafka makes fatal: only this producer is broken, not the worker."""
    rig = Rig()
    rig.round(out(0, 5))
    rig.writer.producer.fail["commit"] = kafka_error(KafkaError.INVALID_TXN_STATE, fatal=True)
    rig.reader.group = {0: 3}
    rig.clock.now += 1
    rig.tx.tick()
    assert rig.log[-4:] == ["commit", "renew", "init", "rewind [(0, 3)]"]
    assert not rig.gave_up
