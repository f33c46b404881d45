"""The AWS Lambda handler on the real stack: records really produced to the local Kafka are
read back, wrapped in the event source mapping's event format, and run through
`aws_lambda.handler.handler`; the outputs are read from the topics and from Cassandra.

Parity: the same records through the handler and through `python -m bytewax.run dataflow`
give the same messages and history rows.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import select
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from cassandra import InvalidRequest
from cassandra.cluster import Session
from confluent_kafka import Message
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from flows.adapters.scylla.session import TABLE
from flows.errors import PreflightError
from flows.retry import DependencyUnavailable
from flows.runtime.awslambda import handler as lambda_handler
from tools import provision, sample
from tools.kafkautil import header, produce_all, read_topic

from .esm import aws_event
from .flowrun import Topics, run_dataflow

N_CUSTOMERS = 40
# small, so the over-the-limit record is small to produce and to carry in an event
EXTRA_ENV = {"MAX_VALUE_BYTES": "4096"}
# header names the pipeline sets (contract: Success and Failure message); inputs' own are dropped
RESERVED = {
    "source.topic",
    "source.partition",
    "source.offset",
    "source.timestamp",
    "error.code",
    "error.stage",
    "error.message",
    "error.field",
    "failed_at",
}
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ROW_COLUMNS = (
    "event_id, source_topic, source_partition, source_offset, status, error_code, event_type, "
    "customer_id, occurred_at, processed_at, output_topic, payload"
)


@pytest.fixture(scope="module")
def customers(pg_conninfo: str) -> dict[str, dict[str, str]]:
    """Seeded customers as PostgreSQL holds them (what an enriched event must carry)."""
    provision.seed_customers(Topics().settings, sample.customers(N_CUSTOMERS))
    with psycopg.connect(pg_conninfo) as conn:
        rows = conn.execute(
            "SELECT customer_id, name, segment, country, status FROM customers WHERE customer_id = ANY(%s)",
            ([sample.customer_id(i) for i in range(N_CUSTOMERS)],),
        )
        return {r[0]: {"name": r[1], "segment": r[2], "country": r[3], "status": r[4]} for r in rows}


@pytest.fixture
def topics_made() -> Iterator[list[Topics]]:
    """Fresh topics per test, deleted afterwards (the broker is shared)."""
    made: list[Topics] = []
    yield made
    for t in made:
        with contextlib.suppress(Exception):  # cleanup only
            provision.delete_topics(t.settings, [t.input, t.output, t.failure])


@pytest.fixture
def lambda_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Points the handler at a set of topics, as a function's environment would; the
    container's clients are closed afterwards so the next test starts cold."""
    lambda_handler.CLIENTS.close()

    def apply(topics: Topics, **extra: str) -> None:
        for name, value in {**topics.env, **extra}.items():
            monkeypatch.setenv(name, value)

    yield apply
    lambda_handler.CLIENTS.close()


def new_topics(made: list[Topics], prefix: str, partitions: int = 3) -> Topics:
    topics = Topics(partitions=partitions, prefix=prefix, extra_env=EXTRA_ENV).create()
    made.append(topics)
    return topics


def input_records() -> list[sample.SampleRecord]:
    """Every failure code, plus the edge cases of the AWS format: no key, a tombstone,
    binary key and header bytes over 127 (negative in Lambda's Java bytes), a null header
    value, empty header value, header names the pipeline sets, non-ASCII JSON, and input
    that already has the fields the output sets."""
    records = list(sample.events(44, N_CUSTOMERS, bad_ratio=0.25, seed=5, max_value_bytes=4096))
    rng = random.Random(9)
    cid = sample.customer_id(3)

    def event(i: int, **fields: Any) -> bytes:
        return json.dumps({**sample.good_event(rng, i, cid), **fields}, ensure_ascii=False).encode()

    records += [
        sample.SampleRecord(None, None, [], "empty_value"),
        sample.SampleRecord(
            b"\x00\xffbin",
            event(9001, note="zażółć 🚀"),
            [
                ("bin", bytes([0, 195, 171, 255])),
                ("empty", b""),
                ("none", None),  # type: ignore[list-item]
                ("error.code", b"spoofed"),
                ("source.topic", b"spoofed"),
            ],
            "enriched",
        ),
        sample.SampleRecord(None, event(9002, customer="stale", enriched_at="stale"), [], "enriched"),
        sample.SampleRecord(b"k", event(9003, customer_id="NOPE-404"), [("trace-id", b"\xfe")], "customer_not_found"),
    ]
    return records


def produce(topics: Topics, records: list[sample.SampleRecord]) -> list[Message]:
    """Produce, then read back what Kafka really stored (offsets, timestamps, headers).
    `murmur2` sends every null key to one partition, so two topics with the same partition
    count get the same records at the same (partition, offset)."""
    settings = topics.settings
    produce_all(settings, topics.input, records, extra={"partitioner": "murmur2"})
    messages = sorted(read_topic(settings, topics.input), key=lambda m: (m.partition(), m.offset()))
    assert len(messages) == len(records)
    return messages


class Context:
    aws_request_id = "test-request"


def coordinates(m: Message) -> tuple[int, int]:
    return int(header(m, "source.partition")), int(header(m, "source.offset"))


def history(cql: Session, topics: Topics) -> list[Any]:
    """The input's history rows; none when no run has made the keyspace yet (a test that
    runs first on its worker and never reaches Cassandra)."""
    try:
        return list(
            cql.execute(
                f"SELECT {ROW_COLUMNS} FROM {topics.keyspace}.{TABLE} WHERE source_topic = %s ALLOW FILTERING",
                (topics.input,),
            )
        )
    except InvalidRequest as exc:
        if f"keyspace {topics.keyspace} does not exist" in str(exc):
            return []
        raise


@pytest.mark.parametrize("source", ["aws:kafka", "aws:SelfManagedKafka"])
def test_handler_enriches_dead_letters_and_records_history(
    source: str, customers, cql: Session, topics_made, lambda_env
) -> None:
    topics = new_topics(topics_made, "itlam")
    records = input_records()
    messages = produce(topics, records)
    expect = {
        (m.partition(), m.offset()): r.expect
        for m, r in zip(messages, _in_produced_order(messages, records), strict=True)
    }
    lambda_env(topics)

    # two invocations, as the mapping would send them: the second reuses the first's clients
    half = len(messages) // 2
    first = lambda_handler.handler(aws_event(messages[:half], source), Context())
    clients = lambda_handler.CLIENTS.get()
    second = lambda_handler.handler(aws_event(messages[half:], source), Context())
    assert lambda_handler.CLIENTS.get() is clients
    assert first["event_source"] == second["event_source"] == source
    codes = Counter(expect.values())
    assert first["records"] + second["records"] == len(records)
    assert first["enriched"] + second["enriched"] == codes["enriched"]
    assert Counter(first["failed_by_code"]) + Counter(second["failed_by_code"]) == Counter(
        {c: n for c, n in codes.items() if c != "enriched"}
    )

    settings = topics.settings
    inputs = {(m.partition(), m.offset()): m for m in messages}
    enriched = list(read_topic(settings, topics.output))
    failed = list(read_topic(settings, topics.failure))
    seen = Counter(coordinates(m) for m in enriched + failed)
    assert set(seen) == set(inputs) and max(seen.values()) == 1, "each record exactly once, in one of the topics"

    for m in enriched:
        src = inputs[coordinates(m)]
        assert expect[coordinates(m)] == "enriched"
        doc, original = json.loads(m.value()), json.loads(src.value())
        assert doc["customer"] == customers[original["customer_id"]]
        assert RFC3339_MS.fullmatch(doc["enriched_at"])
        assert {k: v for k, v in doc.items() if k not in ("customer", "enriched_at")} == {
            k: v for k, v in original.items() if k not in ("customer", "enriched_at")
        }
        assert m.key() == (src.key() if src.key() is not None else original["customer_id"].encode())
        assert m.headers() == [(k, v) for k, v in src.headers() or [] if k not in RESERVED] + [
            ("source.topic", topics.input.encode()),
            ("source.partition", str(src.partition()).encode()),
            ("source.offset", str(src.offset()).encode()),
        ]
    spliced = [m for m in enriched if "zażółć".encode() in m.value()]
    assert len(spliced) == 1 and spliced[0].value().startswith(inputs[coordinates(spliced[0])].value()[:-1])
    assert dict(spliced[0].headers())["bin"] == bytes([0, 195, 171, 255]) and dict(spliced[0].headers())["none"] is None

    for m in failed:
        src = inputs[coordinates(m)]
        code = expect[coordinates(m)]
        assert (m.key(), m.value()) == (src.key(), src.value()), "the input, byte for byte (null stays null)"
        names = [k for k, _ in m.headers()]
        own = [k for k, _ in src.headers() or [] if k not in RESERVED]
        field = ["error.field"] if header(m, "error.field") else []
        assert names == own + [
            "error.code",
            "error.stage",
            "error.message",
            *field,
            "source.topic",
            "source.partition",
            "source.offset",
            "source.timestamp",
            "failed_at",
        ]
        assert header(m, "error.code") == code
        assert (
            header(m, "error.stage")
            == {
                "empty_value": "decode",
                "payload_too_large": "decode",
                "invalid_json": "decode",
                "schema_violation": "validate",
                "customer_not_found": "enrich",
            }[code]
        )
        assert 0 < len(header(m, "error.message").encode()) <= 1024
        assert header(m, "source.topic") == topics.input
        assert header(m, "source.timestamp") == str(src.timestamp()[1])
        assert RFC3339_MS.fullmatch(header(m, "failed_at"))
        if code == "customer_not_found":
            assert header(m, "error.field") == "$.customer_id"

    rows = {(r.source_partition, r.source_offset): r for r in history(cql, topics)}
    assert set(rows) == set(inputs)
    for m in enriched:
        row, doc = rows[coordinates(m)], json.loads(m.value())
        assert (row.status, row.error_code, row.output_topic) == ("enriched", None, topics.output)
        assert (row.event_id, row.customer_id, row.event_type) == (
            doc["event_id"],
            doc["customer_id"],
            doc["event_type"],
        )
        assert json.loads(row.payload) == doc["payload"]
    for m in failed:
        row, (p, o) = rows[coordinates(m)], coordinates(m)
        assert (row.status, row.error_code, row.output_topic) == ("failed", header(m, "error.code"), topics.failure)
        if header(m, "error.stage") == "decode":  # nothing readable: the coordinates stand in for the id
            assert row.event_id == f"{topics.input}:{p}:{o}"


def _in_produced_order(messages: list[Message], records: list[sample.SampleRecord]) -> list[sample.SampleRecord]:
    """The sample record behind each message: matched on key, value and headers (each
    (key, value, headers) of the input is unique, or equal where duplicated)."""
    pool: dict[Any, list[sample.SampleRecord]] = {}
    for r in records:
        pool.setdefault((r.key, r.value, tuple(r.headers)), []).append(r)
    return [pool[(m.key(), m.value(), tuple(m.headers() or []))].pop() for m in messages]


def test_a_retried_batch_rewrites_history_rows_and_may_repeat_messages(
    customers, cql: Session, topics_made, lambda_env
) -> None:
    """What a Lambda retry re-does: the same event processed twice (a failure after the
    outputs were written) leaves one history row per record and every message at most
    twice, each copy with the same source.* headers, so consumers can deduplicate."""
    topics = new_topics(topics_made, "itlamretry", partitions=2)
    records = list(sample.events(12, N_CUSTOMERS, bad_ratio=0.25, seed=8, large=False, max_value_bytes=4096))
    messages = produce(topics, records)
    lambda_env(topics)
    event = aws_event(messages, "aws:kafka")
    assert lambda_handler.handler(event, Context()) == lambda_handler.handler(event, Context())
    out = list(read_topic(topics.settings, topics.output)) + list(read_topic(topics.settings, topics.failure))
    assert Counter(Counter(coordinates(m) for m in out).values()) == {2: len(records)}
    assert len(history(cql, topics)) == len(records)


def set_max_message_bytes(admin_client: AdminClient, topic: str, limit: int) -> None:
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[ConfigEntry("max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET)],
    )
    for fut in admin_client.incremental_alter_configs([resource]).values():
        fut.result(timeout=30)


def test_a_topic_that_refuses_a_dead_letter_at_run_time_does_not_fail_the_batch(
    customers, cql: Session, topics_made, lambda_env, admin
) -> None:
    """The failure topic's size limit lowered under a warm container: the over-the-limit
    dead letter is refused, and so is the produce batch that holds it, other dead letters
    too. A bad record never fails the batch (Lambda would retry it forever): the others go
    through alone, the refused one compressed, and the invocation returns normally."""
    topics = new_topics(topics_made, "itlamkafka", partitions=1)
    records = list(sample.events(12, N_CUSTOMERS, bad_ratio=0.25, seed=4, max_value_bytes=4096))
    assert Counter(r.expect for r in records)["payload_too_large"] == 1
    messages = produce(topics, records)
    lambda_env(topics)
    event = aws_event(messages, "aws:kafka")
    lambda_handler.CLIENTS.get()  # built while the topics were sized by the rule

    set_max_message_bytes(admin, topics.failure, 2000)
    summary = lambda_handler.handler(event, Context())
    assert summary["records"] == len(records) and summary["failed_by_code"]["payload_too_large"] == 1
    out = list(read_topic(topics.settings, topics.output)) + list(read_topic(topics.settings, topics.failure))
    assert sorted(coordinates(m) for m in out) == sorted((m.partition(), m.offset()) for m in messages)
    too_large = [m for m in out if header(m, "error.code") == "payload_too_large"]
    assert len(too_large) == 1 and too_large[0].value() == b"x" * 4097, "sent compressed, whole"
    assert len(history(cql, topics)) == len(records)


@pytest.mark.parametrize(
    ("env", "error", "needle"),
    [
        (
            {"PG_DSN": "postgresql://postgres:s3cret@127.0.0.1:1/enrichment"},
            PreflightError,
            "PostgreSQL at postgresql://postgres:****@127.0.0.1:1/enrichment: can't connect",
        ),
        ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, PreflightError, "Kafka at 127.0.0.1:1 (PLAINTEXT): can't connect"),
        ({"SCYLLA_PORT": "1"}, DependencyUnavailable, "cassandra: still failing after"),
    ],
)
def test_an_unreachable_dependency_fails_the_invocation_and_writes_nothing(
    env: dict[str, str], error: type[Exception], needle: str, customers, cql: Session, topics_made, lambda_env
) -> None:
    """Lambda retries a failed invocation; nothing is dead-lettered for a dependency's sake."""
    topics = new_topics(topics_made, "itlamdown", partitions=1)
    settings = topics.settings  # the real addresses, for reading back
    messages = produce(topics, list(sample.events(3, N_CUSTOMERS, bad_ratio=0.5, seed=2, large=False)))
    lambda_env(topics, STARTUP_TIMEOUT_SECONDS="2", RETRY_DEADLINE_SECONDS="1", **env)
    with pytest.raises(error) as err:
        lambda_handler.handler(aws_event(messages, "aws:kafka"), Context())
    assert needle in str(err.value) and "s3cret" not in str(err.value)
    assert not lambda_handler.CLIENTS.built, "the next invocation starts over"
    assert list(read_topic(settings, topics.output)) == [] and list(read_topic(settings, topics.failure)) == []
    assert history(cql, topics) == []


def normalised_messages(
    messages: list[Message], topics: Topics, inputs: list[Message], success: bool
) -> dict[tuple[int, int], Any]:
    """Key, value and headers by source coordinates, with what must differ between two runs
    replaced by placeholders after checking it: `enriched_at` (the value's processing time,
    success only), `failed_at` (the failure's processing time), `source.topic` (each run has
    its own input topic) and `source.timestamp` (each input record got its own broker
    timestamp when produced to its topic). Output partitions are not compared: a null key is
    placed at random by the output producer."""
    stamps = {(m.partition(), m.offset()): str(m.timestamp()[1]).encode() for m in inputs}
    out: dict[tuple[int, int], Any] = {}
    for m in messages:
        headers = []
        for name, value in m.headers() or []:
            if name == "source.topic":
                assert value == topics.input.encode()
                value = b"<input topic>"
            elif name == "source.timestamp":
                assert value == stamps[coordinates(m)]
                value = b"<input timestamp>"
            elif name == "failed_at":
                assert RFC3339_MS.fullmatch(value.decode())
                value = b"<failed_at>"
            headers.append((name, value))
        value = m.value()
        if success:
            stamp = json.loads(value)["enriched_at"]
            assert RFC3339_MS.fullmatch(stamp)
            value = value.replace(f'"enriched_at":"{stamp}"'.encode(), b'"enriched_at":"<enriched_at>"')
        out[coordinates(m)] = (m.key(), value, headers)
    assert len(out) == len(messages)
    return out


def normalised_rows(rows: list[Any], topics: Topics) -> dict[tuple[int, int], dict[str, Any]]:
    """History rows by source coordinates, without `processed_at` (processing time) and with
    topic names replaced by their role: `source_topic`, `output_topic`, and the
    `<topic>:<partition>:<offset>` that stands in for an unreadable `event_id`."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    roles = {topics.output: "<output topic>", topics.failure: "<failure topic>"}
    for r in rows:
        row = r._asdict()
        assert row.pop("processed_at") is not None
        assert row["source_topic"] == topics.input
        row["source_topic"] = "<input topic>"
        row["output_topic"] = roles[row["output_topic"]]
        if row["event_id"].startswith(f"{topics.input}:"):
            row["event_id"] = "<input topic>" + row["event_id"][len(topics.input) :]
        out[(r.source_partition, r.source_offset)] = row
    return out


def test_parity_with_the_dataflow(customers, cql: Session, topics_made, lambda_env) -> None:
    records = input_records()
    via_lambda = new_topics(topics_made, "itlamparity")
    via_dataflow = new_topics(topics_made, "itdfparity")
    lambda_in, dataflow_in = produce(via_lambda, records), produce(via_dataflow, records)
    assert [(m.partition(), m.offset(), m.key(), m.value(), m.headers()) for m in lambda_in] == [
        (m.partition(), m.offset(), m.key(), m.value(), m.headers()) for m in dataflow_in
    ], "the same records at the same coordinates in both input topics"

    run = run_dataflow({**via_dataflow.env, "STOP_AT_END": "true"})
    assert run.returncode == 0, run.stderr[-3000:]
    lambda_env(via_lambda)
    summary = lambda_handler.handler(aws_event(lambda_in, "aws:SelfManagedKafka"), Context())
    assert summary["records"] == len(records)

    for topic_of, success in ((lambda t: t.output, True), (lambda t: t.failure, False)):
        got = normalised_messages(
            list(read_topic(via_lambda.settings, topic_of(via_lambda))), via_lambda, lambda_in, success
        )
        want = normalised_messages(
            list(read_topic(via_dataflow.settings, topic_of(via_dataflow))), via_dataflow, dataflow_in, success
        )
        assert got and got == want
    assert summary["enriched"] == len(list(read_topic(via_dataflow.settings, via_dataflow.output)))

    lambda_rows = normalised_rows(history(cql, via_lambda), via_lambda)
    dataflow_rows = normalised_rows(history(cql, via_dataflow), via_dataflow)
    assert len(lambda_rows) == len(records) and lambda_rows == dataflow_rows


def test_handler_over_scram_and_client_certificates(customers, cql: Session, topics_made, lambda_env, capsys) -> None:
    """The Lambda connects as the dataflow does (tests/integration/test_tls.py): Kafka over
    SASL_SSL with SCRAM, PostgreSQL verify-full with a client certificate, Cassandra with one.
    Its metrics are the EMF lines on stdout (tests/unit/test_emf.py has the format)."""
    from .test_tls import cql_tls, kafka_scram, pg_tls

    topics = new_topics(topics_made, "itlamtls", partitions=2)
    records = list(sample.events(30, N_CUSTOMERS, bad_ratio=0.2, seed=8, max_value_bytes=4096))
    messages = produce(topics, records)
    lambda_env(topics, **kafka_scram(), **pg_tls(), **cql_tls())
    summary = lambda_handler.handler(aws_event(messages, "aws:kafka"), Context())
    assert summary["records"] == len(records)
    emf_lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    main = next(d for d in emf_lines if "Records" in d)
    assert (main["Records"], main["Enriched"], main["Failed"]) == (30, summary["enriched"], summary["failed"])
    dead = {d["ErrorCode"]: d["DeadLetters"] for d in emf_lines if "ErrorCode" in d}
    assert dead == summary["failed_by_code"]
    out = list(read_topic(topics.settings, topics.output)) + list(read_topic(topics.settings, topics.failure))
    assert sorted(coordinates(m) for m in out) == sorted((m.partition(), m.offset()) for m in messages)
    assert len(history(cql, topics)) == len(records)


def test_handler_hears_customer_changes_between_invocations(topics_made, lambda_env, empty_database) -> None:
    """CACHE_INVALIDATION=notify in Lambda: no thread between invocations; each invocation
    first reads what PostgreSQL announced, so a customer changed after one batch is fresh in
    the next, whatever the TTL; a bulk change too (its customer's the last of 2,000
    announcements: more than one read of the connection). A database of its own, so the
    announcements are this test's alone."""
    from flows.adapters.postgres import changes

    from .conftest import unique

    db = empty_database
    topics = new_topics(topics_made, "itlamfresh", partitions=1)
    cid = unique("lamfresh")
    others = [sample.Customer(f"{cid}-{i}", "Other", "smb", "FR", "active") for i in range(2000)]
    provision.seed_customers(db, [sample.Customer(cid, "Before", "smb", "FR", "active"), *others])
    changes.install(db)
    lambda_env(topics, CACHE_INVALIDATION="notify", CACHE_TTL_SECONDS="3600", PG_DSN=db.pg_dsn.get())

    def one_batch(i: int) -> dict[str, Any]:
        value = json.dumps(
            {"event_id": f"{cid}-{i}", "event_type": "t", "occurred_at": "2026-12-03T00:00:00Z", "customer_id": cid}
        ).encode()
        produce_all(topics.settings, topics.input, [sample.SampleRecord(None, value, [], "enriched")])
        latest = max(read_topic(topics.settings, topics.input), key=lambda m: m.offset())
        lambda_handler.handler(aws_event([latest], "aws:kafka"), Context())
        last = max(read_topic(topics.settings, topics.output), key=lambda m: m.offset())
        return json.loads(last.value())["customer"]  # type: ignore[no-any-return]

    def delivered() -> None:
        """PostgreSQL has sent the announcements to the container's session (Lambda has it
        frozen meanwhile)."""
        listener = lambda_handler.CLIENTS.get().app.change_listener()
        assert listener is not None and listener._conn is not None
        assert select.select([listener._conn.fileno()], [], [], 30)[0], "the change reached the container's session"
        time.sleep(0.5)  # the rest of a bulk change, sent right behind its first announcement

    assert one_batch(0)["name"] == "Before"
    with psycopg.connect(db.pg_dsn.get(), autocommit=True) as conn:
        conn.execute("UPDATE customers SET name = 'After' WHERE customer_id = %s", (cid,))
    delivered()
    assert one_batch(1)["name"] == "After"
    with psycopg.connect(db.pg_dsn.get()) as conn:  # one transaction: announced together
        conn.execute("UPDATE customers SET segment = 'bulk' WHERE customer_id <> %s", (cid,))
        conn.execute("UPDATE customers SET name = 'Bulk' WHERE customer_id = %s", (cid,))
    delivered()
    assert one_batch(2)["name"] == "Bulk"


def test_handler_reads_and_writes_schema_registry_formats(customers, cql: Session, topics_made, lambda_env) -> None:
    """The Lambda with INPUT_FORMAT=protobuf and OUTPUT_FORMAT=avro: the events a Protobuf
    producer wrote are enriched into Avro; a value not in the wire format is dead-lettered
    as it came (`invalid_format`), never failing the batch."""
    from tools import formats

    topics = new_topics(topics_made, "itlamfmt")
    writer = formats.EventWriter("protobuf", topics.settings, topics.input)
    rng = random.Random(9)
    docs = [sample.good_event(rng, i, sample.customer_id(i % N_CUSTOMERS)) for i in range(20)]
    produce_all(
        topics.settings,
        topics.input,
        [(None, writer.write(d), []) for d in docs] + [(None, b'{"json": "not the wire format"}', [])],
    )
    messages = sorted(read_topic(topics.settings, topics.input), key=lambda m: (m.partition(), m.offset()))
    lambda_env(topics, INPUT_FORMAT="protobuf", OUTPUT_FORMAT="avro")
    result = lambda_handler.handler(aws_event(messages, "aws:SelfManagedKafka"), Context())
    assert result["enriched"] == 20 and result["failed_by_code"] == {"invalid_format": 1}
    out = formats.reader("avro", topics.settings, topics.output)
    enriched = [json.loads(out.read(m.value())) for m in read_topic(topics.settings, topics.output)]
    assert sorted(d["event_id"] for d in enriched) == sorted(d["event_id"] for d in docs)
    assert all(d["customer"] == customers[d["customer_id"]] for d in enriched)
    (dead,) = read_topic(topics.settings, topics.failure)
    assert dead.value() == b'{"json": "not the wire format"}' and header(dead, "error.code") == "invalid_format"
