"""Records at and over every size limit, on the real broker: each ends routed exactly once,
a dead letter byte for byte, and the flow keeps running; topics that break the size rule
stop the flow at start with one line (docs/operations.md, "Sizing the topics")."""

from __future__ import annotations

import json
import random
import time

import pytest
from cassandra.cluster import Session
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from flows.adapters.kafka.topics import check_topic_sizes
from flows.core.model import Customer
from flows.core.sizes import value_fits
from flows.errors import PreflightError
from tools import provision, sample
from tools.kafkautil import produce_all

from .conftest import BOOTSTRAP, unique
from .flowrun import Topics, run_dataflow, start_dataflow
from .outcome import collect, readable
from .resilience import sigterm

BIG = Customer("BIG-NAME", "N" * 20_000, "retail", "DE", "active")  # enrichment adds > 8 KiB


def valid(i: int, cid: str = "C0000001", pad: int = 0) -> bytes:
    return json.dumps(
        {
            "event_id": f"s-{i}",
            "event_type": "t",
            "occurred_at": "2026-01-01T00:00:00Z",
            "customer_id": cid,
            "payload": {"pad": "p" * pad},
        },
        separators=(",", ":"),
    ).encode()


def padded_to(size: int, i: int, cid: str = "C0000001") -> bytes:
    value = valid(i, cid, 0)
    return valid(i, cid, size - len(value))


@pytest.fixture(scope="module", autouse=True)
def customers() -> None:
    provision.seed_customers(Topics().settings, [*sample.customers(10), BIG])


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_records_at_and_over_the_limits_are_routed_whole(exactly_once: bool, cql: Session) -> None:
    """In exactly-once mode a message the broker refused would fail its whole transaction
    (and be read and refused again, forever): what a topic can't take must be found out
    before it is sent, and the zstd retry is not available (a second producer can't join
    the transaction)."""
    extra = {"PROCESSING_GUARANTEE": "exactly-once", "CONSUMER_GROUP": unique("sizes")} if exactly_once else {}
    topics = Topics(partitions=1, prefix="sizes", extra_env=extra).create()
    s = topics.settings
    limit = s.max_value_bytes
    rnd = random.Random(3)
    cases: list[tuple[bytes | None, bytes, list[tuple[str, bytes]], str]] = [
        (b"n1", valid(1), [], "enriched"),
        # (a) just over the value limit, accepted by the input topic (incompressible bytes)
        (b"a", rnd.randbytes(limit + 1), [], "payload_too_large"),
        (b"a2", rnd.randbytes(limit + 40_000), [("h", b"v")], "payload_too_large"),
        # a valid value exactly at the limit, and with a large input header
        (b"b1", padded_to(limit, 2), [], "enriched"),
        (b"b2", padded_to(limit, 3), [("big", rnd.randbytes(60_000))], "enriched"),
        # (b) the enriched message would not fit the output topic: a very large customer
        (None, padded_to(limit, 4, "BIG-NAME"), [("big", rnd.randbytes(60_000))], "payload_too_large"),
        (b"n2", valid(5), [], "enriched"),
    ]
    produce_all(s, topics.input, [(k, v, h) for k, v, h, _ in cases])
    # a record that arrived compressed: far over what the topics take uncompressed
    compressible = json.dumps({"event_id": "z", "note": "zz" * 1_500_000}).encode()
    produce_all(
        s,
        topics.input,
        [(b"z", compressible, [("h", b"1")])],
        extra={"compression.type": "zstd", "message.max.bytes": 10_000_000},
    )
    produce_all(s, topics.input, [(b"n3", valid(6), [], "x")])
    expected = [c[3] for c in cases] + ["payload_too_large", "enriched"]
    values = [c[1] for c in cases] + [compressible, valid(6)]
    keys = [c[0] for c in cases] + [b"z", b"n3"]

    run = run_dataflow({**topics.env, "STOP_AT_END": "true"}, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = collect(s, cql, topics.keyspace, topics.input, topics.output, topics.failure, committed_only=exactly_once)
    assert not out.duplicates
    for offset, expect in enumerate(expected):
        at = (0, offset)
        routed = out.routed(at)
        assert routed is not None, f"offset {offset} lost"
        row = out.history[at]
        assert readable(row)
        if expect == "enriched":
            assert at in out.enriched and row.status == "enriched", (offset, out.code(at))
        else:
            assert out.code(at) == expect, (offset, out.code(at))
            if exactly_once and keys[offset] == b"z":  # 3 MB uncompressed, no zstd retry: goes without it
                assert routed.value is None and routed.key == b"z"
            else:
                assert routed.value == values[offset] and routed.key == keys[offset], "the dead letter is the record"
            assert (row.status, row.error_code) == ("failed", expect)
    assert "delivery fallback" in run.stderr
    if exactly_once:
        assert "dead_letter_without_value" in run.stderr and "transaction not committed" not in run.stderr
    else:
        assert "dead_letter_compressed" in run.stderr


def test_a_large_value_limit_of_the_topics_and_a_small_one_of_the_flow(cql: Session) -> None:
    """(c) MAX_VALUE_BYTES=100000 against topics made for 1 MiB: a 1,000,000-byte value."""
    topics = Topics(partitions=1, prefix="sizes").create()
    small = {**topics.env, "MAX_VALUE_BYTES": "100000"}
    s = topics.settings
    value = random.Random(4).randbytes(1_000_000)
    produce_all(s, topics.input, [(b"n", valid(1), []), (b"c", value, []), (b"n", valid(2), [])])
    run = run_dataflow({**small, "STOP_AT_END": "true"}, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = collect(s, cql, topics.keyspace, topics.input, topics.output, topics.failure)
    assert set(out.enriched) == {(0, 0), (0, 2)}
    assert out.code((0, 1)) == "payload_too_large" and out.failed[(0, 1)].value == value
    assert len(out.history) == 3


def _alter(topic: str, **configs: str) -> None:
    client = AdminClient({"bootstrap.servers": BOOTSTRAP})
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(k.replace("_", "."), v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()
        ],
    )
    for fut in client.incremental_alter_configs([resource]).values():
        fut.result(30)


def test_topics_shrunk_under_the_running_flow_neither_stop_it_nor_lose_a_record(tmp_path, cql: Session) -> None:
    topics = Topics(partitions=1, prefix="shrink").create()
    s = topics.settings
    proc = start_dataflow({**topics.env, "STOP_AT_END": "false"}, tmp_path / "flow.log")
    try:
        produce_all(s, topics.input, [(b"k", valid(i), []) for i in range(50)])
        _wait_for(s, cql, topics, 50)
        _alter(topics.output, max_message_bytes="200")  # smaller than any enriched message
        _alter(topics.failure, max_message_bytes="3000")
        rnd = random.Random(5)
        later = [(b"k", valid(i), []) for i in range(50, 80)]
        later += [(b"x", rnd.randbytes(5000), []), (b"y", b"{" + b" " * 6000 + b"}", [])]  # dead letters > 3000
        produce_all(s, topics.input, later)
        _wait_for(s, cql, topics, 82)
        assert proc.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]
    finally:
        rc, _ = sigterm(proc, timeout=60)
    log = (tmp_path / "flow.log").read_text()
    assert rc == 0, log[-3000:]
    out = collect(s, cql, topics.keyspace, topics.input, topics.output, topics.failure)
    assert not out.duplicates and len(out.enriched) + len(out.failed) == 82
    assert set(out.enriched) == {(0, i) for i in range(50)}
    for i in range(50, 80):
        dead = out.failed[(0, i)]
        assert dead.header("error.code") == "payload_too_large" and dead.value == valid(i)
        assert "the output topic" in (dead.header("error.message") or "")
        row = out.history[(0, i)]
        assert (row.status, row.error_code, row.output_topic) == ("failed", "payload_too_large", topics.failure)
    stub = out.failed[(0, 80)]  # random bytes: too large for the failure topic even compressed
    assert stub.value is None and stub.header("error.omitted") == "value,headers"  # the value alone is too big
    assert stub.header("error.code") == "invalid_json" and stub.key == b"x"
    assert out.failed[(0, 81)].value == b"{" + b" " * 6000 + b"}"  # compresses: kept whole
    assert "output_refused" in log and "dead_letter_without_value" in log


def _wait_for(s, cql: Session, topics: Topics, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = cql.execute(
            f"SELECT source_offset FROM {topics.keyspace}.event_history WHERE source_topic = %s ALLOW FILTERING",
            (topics.input,),
        )
        if len(list(rows)) >= n:
            time.sleep(1)  # the messages are acknowledged right after the rows
            return
        assert time.monotonic() < deadline, f"fewer than {n} records processed in {timeout}s"
        time.sleep(0.5)


def _create(names_configs: dict[str, dict[str, str]]) -> None:
    client = AdminClient({"bootstrap.servers": BOOTSTRAP})
    futures = client.create_topics(
        [NewTopic(n, num_partitions=1, replication_factor=1, config=c) for n, c in names_configs.items()],
        operation_timeout=30,
    )
    for fut in futures.values():
        fut.result(30)


def test_topics_that_break_the_size_rule_stop_the_flow_at_start_naming_each() -> None:
    base = unique("rule")
    names = {"INPUT_TOPIC": f"{base}.in", "OUTPUT_TOPIC": f"{base}.out", "FAILURE_TOPIC": f"{base}.dlq"}
    # the output topic takes the broker's default (the local stack's: 2 MiB)
    _create(
        {
            names["INPUT_TOPIC"]: {"max.message.bytes": "3000000"},
            names["OUTPUT_TOPIC"]: {},
            names["FAILURE_TOPIC"]: {"max.message.bytes": "3000000"},
        }
    )
    run = run_dataflow({**names, "STOP_AT_END": "true", "SCYLLA_KEYSPACE": "enrichment_it"}, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if '"level":"ERROR"' in line]
    assert len(errors) == 1, run.stderr[-2000:]
    line = errors[0]
    assert "topic sizes do not fit" in line
    assert f"OUTPUT_TOPIC {names['OUTPUT_TOPIC']} accepts 2097152 bytes (the broker's default), needs 3008192" in line
    assert f"FAILURE_TOPIC {names['FAILURE_TOPIC']} accepts 3000000 bytes, needs 3008192" in line
    assert "needs 1048673 to take a value of MAX_VALUE_BYTES" not in line  # the input topic is fine


def test_a_compacted_failure_topic_stops_the_flow_at_start() -> None:
    topics = Topics(partitions=1, prefix="compact").create()
    _alter(topics.failure, cleanup_policy="compact")
    run = run_dataflow({**topics.env, "STOP_AT_END": "true"}, timeout=120)
    assert run.returncode == 2
    assert f"FAILURE_TOPIC {topics.failure} has cleanup.policy=compact" in run.stderr


def test_topics_the_project_creates_pass_the_check_and_smaller_ones_are_enlarged() -> None:
    topics = Topics(partitions=1, prefix="fit").create()  # what make demo and the tests use
    limits = check_topic_sizes(topics.settings)
    assert limits.failure >= limits.output > value_fits(topics.settings.max_value_bytes)
    _alter(topics.failure, max_message_bytes="5000")
    with pytest.raises(PreflightError, match=f"FAILURE_TOPIC {topics.failure} accepts 5000 bytes"):
        check_topic_sizes(topics.settings)
    topics.create()
    assert check_topic_sizes(topics.settings) == limits
