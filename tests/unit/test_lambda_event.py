"""The Lambda event parser and summary (aws_lambda.event): pure, no servers."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest

from flows.core import outcome as route
from flows.core.decode import decode_record
from flows.core.model import Code, Decoded, Failure, SourceRecord, Stage
from flows.errors import SettingsError
from flows.runtime.awslambda import handler as lambda_handler
from flows.runtime.awslambda.event import KafkaBatch, MalformedEvent, parse_event, reject_own_outputs, summarise

from .fakes import ALICE_MEMBER

GOOD = (
    b'{"event_id":"e1","event_type":"login","occurred_at":"2024-05-01T12:00:00Z","customer_id":"C1","payload":{"a":1}}'
)
NOW = dt.datetime(2024, 6, 1, 8, 30, tzinfo=dt.UTC)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def aws_record(topic: str = "events", partition: int = 0, offset: int = 0, **fields: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp": 1_700_000_000_123,
        "timestampType": "CREATE_TIME",
        "key": b64(b"k"),
        "value": b64(GOOD),
        "headers": [],
    }
    rec.update(fields)
    return rec


def aws_event(*records: dict[str, Any], source: str = "aws:kafka") -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(f"{rec.get('topic', 'events')}-{rec.get('partition', 0)}", []).append(rec)
    event: dict[str, Any] = {"eventSource": source, "records": groups}
    if source == "aws:kafka":
        event["eventSourceArn"] = "arn:aws:kafka:eu-west-1:123456789012:cluster/demo/abc"
    event["bootstrapServers"] = "b-1.example:9092,b-2.example:9092"
    return event


@pytest.mark.parametrize("source", ["aws:kafka", "SelfManagedKafka", "aws:SelfManagedKafka"])
def test_both_event_sources_become_the_records_the_dataflow_sees(source: str) -> None:
    event = aws_event(
        aws_record(partition=0, offset=7, headers=[{"trace-id": list(b"t-1")}, {"lang": list(b"de")}]),
        aws_record(partition=0, offset=8, key=None),
        aws_record(partition=2, offset=0, value=b64(b"{not json")),
        source=source,
    )
    batch = parse_event(event)
    assert batch.event_source == source
    assert batch.records == [
        SourceRecord("events", 0, 7, 1_700_000_000_123, b"k", GOOD, [("trace-id", b"t-1"), ("lang", b"de")]),
        SourceRecord("events", 0, 8, 1_700_000_000_123, None, GOOD, []),
        SourceRecord("events", 2, 0, 1_700_000_000_123, b"k", b"{not json", []),
    ]


def test_missing_or_null_key_and_value_are_null_and_empty_stays_empty() -> None:
    missing = aws_record(offset=0)
    del missing["key"], missing["value"]
    records = parse_event(
        aws_event(
            missing,
            aws_record(offset=1, key=None, value=None),  # a tombstone
            aws_record(offset=2, key="", value=""),
        )
    ).records
    assert [(r.key, r.value) for r in records] == [(None, None), (None, None), (b"", b"")]


def test_binary_key_and_value_survive_byte_for_byte() -> None:
    raw = bytes(range(256))
    (rec,) = parse_event(aws_event(aws_record(key=b64(raw[::-1]), value=b64(raw)))).records
    assert rec.key == raw[::-1] and rec.value == raw


def test_header_bytes_signed_or_unsigned_and_order_and_duplicates_kept() -> None:
    headers = [
        {"name": [104, 105, -61, -85]},  # "hië" as Java's signed bytes
        {"name": [104, 105, 195, 171]},  # the same, unsigned
        {"empty": []},
        {"nothing": None},  # a header with a null value stays null
        {"a": [1], "b": [2]},  # two names in one map: both, in order
    ]
    (rec,) = parse_event(aws_event(aws_record(headers=headers))).records
    assert rec.headers == [
        ("name", "hië".encode()),
        ("name", "hië".encode()),
        ("empty", b""),
        ("nothing", None),
        ("a", b"\x01"),
        ("b", b"\x02"),
    ]


def test_missing_headers_and_timestamp() -> None:
    rec = aws_record()
    del rec["headers"], rec["timestamp"]
    (parsed,) = parse_event(aws_event(rec)).records
    assert parsed.headers == [] and parsed.timestamp_ms == -1


def test_an_event_without_records_in_its_groups_is_an_empty_batch() -> None:
    assert parse_event({"eventSource": "aws:kafka", "records": {}}) == KafkaBatch("aws:kafka", [])
    assert parse_event({"eventSource": "aws:kafka", "records": {"events-0": []}}).records == []


def _with(**fields: Any) -> dict[str, Any]:
    return aws_event(aws_record(**fields))


def _without(name: str) -> dict[str, Any]:
    rec = aws_record()
    del rec[name]
    return aws_event(rec)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ([], "the event is a list, not an object"),
        (None, "the event is null, not an object"),
        (
            {"records": {}},
            "eventSource is None; this handler takes 'aws:kafka' or 'SelfManagedKafka' or 'aws:SelfManagedKafka'",
        ),
        ({"eventSource": "aws:sqs", "records": {}}, "eventSource is 'aws:sqs'"),
        ({"eventSource": "aws:kafka"}, "the event has no 'records'"),
        ({"eventSource": "aws:kafka", "records": None}, "the event has no 'records'"),
        ({"eventSource": "aws:kafka", "records": [aws_record()]}, "'records' is a list, not an object"),
        (
            {"eventSource": "aws:kafka", "records": {"events-0": aws_record()}},
            "records['events-0'] is a dict, not a list",
        ),
        ({"eventSource": "aws:kafka", "records": {"events-0": ["x"]}}, "records['events-0'][0] is a str, not a record"),
        (_with(value="not base64!"), "records['events-0'][0].value is not valid base64"),
        (_with(value="abc"), "records['events-0'][0].value is not valid base64"),  # bad padding
        (_with(key="a2V5\n"), "records['events-0'][0].key is not valid base64"),
        (_with(key="ключ"), "records['events-0'][0].key is not valid base64"),
        (_with(value=[1, 2]), "records['events-0'][0].value is a list, not a base64 string"),
        (_with(partition="0"), "records['events-0'][0].partition is '0', not an integer"),
        (_with(partition=True), "partition is True, not an integer"),
        (_with(offset=1.5), "records['events-0'][0].offset is 1.5, not an integer"),
        (_without("offset"), "records['events-0'][0].offset is None, not an integer"),
        (_with(timestamp="yesterday"), "timestamp is 'yesterday', not an integer"),
        (_without("topic"), "records['events-0'][0].topic is None, not a topic name"),
        (_with(headers={"a": [1]}), "records['events-0'][0].headers is a dict, not a list"),
        (_with(headers=[["a", [1]]]), "records['events-0'][0].headers[0] is a list, not a {name: [bytes]} object"),
        (_with(headers=[{"a": "aGk="}]), "records['events-0'][0].headers[0]['a'] is not a list of byte values"),
        (_with(headers=[{"a": [256]}]), "headers[0]['a'] is not a list of byte values (-128..255)"),
        (_with(headers=[{"a": [-129]}]), "headers[0]['a'] is not a list of byte values"),
        (_with(headers=[{"a": [1, "2"]}]), "headers[0]['a'] is not a list of byte values"),
    ],
)
def test_malformed_events_raise_a_clear_error(event: Any, message: str) -> None:
    with pytest.raises(MalformedEvent) as err:
        parse_event(event)
    assert message in str(err.value)


def test_the_handler_rejects_a_malformed_event_before_opening_any_client() -> None:
    with pytest.raises(MalformedEvent, match="no 'records'"):
        lambda_handler.handler({"eventSource": "aws:kafka"}, None)
    assert not lambda_handler.CLIENTS.built


def test_a_bad_setting_fails_the_invocation_naming_it_before_any_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCYLLA_PORT", "ninety")
    with pytest.raises(SettingsError, match="^SCYLLA_PORT='ninety': expected an integer"):
        lambda_handler.handler(aws_event(aws_record()), None)
    assert not lambda_handler.CLIENTS.built


@pytest.mark.parametrize(
    ("topic", "setting"), [("events.enriched", "OUTPUT_TOPIC"), ("events.failed", "FAILURE_TOPIC")]
)
def test_a_mapping_on_the_pipelines_own_output_is_refused(topic: str, setting: str) -> None:
    batch = parse_event(aws_event(aws_record(topic="events"), aws_record(topic=topic)))
    with pytest.raises(SettingsError, match=f"^{setting}='{topic}': .* in a loop"):
        reject_own_outputs(batch, "events.enriched", "events.failed")
    reject_own_outputs(parse_event(aws_event(aws_record(topic="events"))), "events.enriched", "events.failed")


def test_summary_counts_by_outcome_and_failure_code() -> None:
    batch = parse_event(aws_event(*(aws_record(offset=i) for i in range(5))))
    fragment = [ALICE_MEMBER]
    results = []
    for rec, value in zip(batch.records, [GOOD, GOOD, b"", b"{", b"[]"], strict=True):
        item = decode_record(
            SourceRecord(rec.topic, rec.partition, rec.offset, rec.timestamp_ms, rec.key, value, rec.headers), 1024
        )
        if isinstance(item, Decoded):
            results.append(route.success(item, fragment, "out", NOW, route.rfc3339(NOW)))
        else:
            assert isinstance(item, Failure)
            results.append(route.failure(item, "dlq", NOW))
    results.append(route.failure(Failure(batch.records[0], Code.CUSTOMER_NOT_FOUND, Stage.ENRICH, "no"), "dlq", NOW))
    assert summarise(batch, results) == {
        "event_source": "aws:kafka",
        "records": 6,
        "enriched": 2,
        "failed": 4,
        "failed_by_code": {"customer_not_found": 1, "empty_value": 1, "invalid_json": 1, "schema_violation": 1},
    }


def test_the_lambda_runtime_imports_no_bytewax() -> None:
    """The Lambda package is built without bytewax (requirements-lambda.txt)."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; sys.modules['bytewax'] = None; import aws_lambda.handler; "
        "assert not [m for m in sys.modules if m.startswith('bytewax.')]"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr


def test_the_lambda_refuses_exactly_once_before_opening_anything() -> None:
    """Its event source mapping commits the input offsets outside any transaction: the
    Lambda can't give exactly-once, and says so instead of pretending (docs/lambda.md)."""
    import pytest

    from flows.errors import SettingsError
    from flows.runtime.awslambda.clients import Clients
    from flows.settings import Settings

    settings = Settings.from_env({"PROCESSING_GUARANTEE": "exactly-once", "KAFKA_BOOTSTRAP_SERVERS": "192.0.2.1:9"})
    with pytest.raises(SettingsError, match="PROCESSING_GUARANTEE=exactly-once: the Lambda runs at-least-once only"):
        Clients.build(settings)
