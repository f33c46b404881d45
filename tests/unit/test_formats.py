"""The Schema Registry formats' pure parts: a framed value decoded through a reader and
validated as JSON input is (failures keep the original bytes), the enriched event mapped to
each format's record, the Protobuf descriptor built in code against schemas/enriched.proto,
and the registry's settings checked at start."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import fastavro
import pytest

from flows.adapters.registry import writers
from flows.core.decode import Unreadable, decode_framed
from flows.core.model import Code, Decoded, Failure, Stage
from flows.errors import SettingsError
from flows.settings import Settings

from .fakes import GOOD, record

SCHEMAS = Path(writers.__file__).resolve().parent / "schemas"


def test_a_framed_value_is_validated_as_json_and_keeps_its_bytes() -> None:
    framed = b"\x00\x00\x00\x00\x07<avro bytes>"
    rec = record(framed)
    ok = decode_framed(rec, 1000, lambda value: GOOD)
    assert isinstance(ok, Decoded) and ok.record.value == framed and ok.event.customer_id == "C1"
    missing = json.dumps({**json.loads(GOOD), "customer_id": None}).encode()
    bad = decode_framed(rec, 1000, lambda value: missing)
    assert isinstance(bad, Failure) and bad.code == Code.SCHEMA_VIOLATION and bad.field == "$.customer_id"
    assert bad.record.value == framed, "the dead letter carries the value as it came"


def test_what_a_reader_refuses_and_what_fails_any_format_first() -> None:
    def unreadable(value: bytes) -> bytes:
        raise Unreadable(Code.INVALID_FORMAT, "the magic byte is 1")

    failed = decode_framed(record(b"\x01abcd"), 1000, unreadable)
    assert isinstance(failed, Failure) and (failed.code, failed.stage) == (Code.INVALID_FORMAT, Stage.DECODE)
    empty = decode_framed(record(None), 1000, unreadable)
    assert isinstance(empty, Failure) and empty.code == Code.EMPTY_VALUE
    large = decode_framed(record(b"\x00" * 2000), 1000, unreadable)
    assert isinstance(large, Failure) and large.code == Code.PAYLOAD_TOO_LARGE


ENRICHED = json.loads(
    b'{"event_id":"e1","event_type":"login","occurred_at":"2024-05-01T12:00:00.123456+02:00","customer_id":"C1",'
    b'"payload":{"a":1,"b":[true,null]},"extra":{"n":1},"source":"s",'
    b'"customer":{"name":"Alice","segment":"retail","country":"DE","status":"active"},'
    b'"enriched_at":"2026-01-01T00:00:00.001Z"}'
)


def test_the_enriched_event_as_an_avro_record() -> None:
    avro = writers.to_avro(ENRICHED)
    assert avro["occurred_at"] == dt.datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=dt.UTC)
    assert json.loads(avro["payload"]) == {"a": 1, "b": [True, None]}
    assert {k: json.loads(v) for k, v in avro["attributes"].items()} == {"extra": {"n": 1}, "source": "s"}
    schema = fastavro.parse_schema(json.loads(writers.AVRO_SCHEMA))
    assert fastavro.validate(avro, schema, raise_errors=True)


def test_the_enriched_event_as_a_protobuf_message() -> None:
    msg = writers.to_protobuf(ENRICHED)
    assert msg.occurred_at.ToDatetime(tzinfo=dt.UTC) == dt.datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=dt.UTC)
    assert dict(msg.attributes) == {"extra": '{"n":1}', "source": '"s"'}
    assert msg.payload["a"] == 1 and msg.customer.country == "DE"


def test_the_protobuf_descriptor_is_enriched_proto() -> None:
    """The .proto file users read and the descriptor the writer registers say the same."""
    text = (SCHEMAS / "enriched.proto").read_text()
    declared = {
        (msg, name, int(number))
        for msg, body in re.findall(r"message (\w+) \{(.*?)\n\}", text, re.S)
        for name, number in re.findall(r"(\w+) = (\d+);", body)
    }
    fd = writers.protobuf_descriptor()
    built = {(m.name, f.name, f.number) for m in fd.message_type for f in m.field}
    assert declared == built


def test_the_registrys_settings_are_checked_at_start(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="SCHEMA_REGISTRY_PASSWORD: required"):
        Settings.from_env({"SCHEMA_REGISTRY_USERNAME": "u"})
    with pytest.raises(SettingsError, match="one way to authenticate"):
        Settings.from_env(
            {"SCHEMA_REGISTRY_USERNAME": "u", "SCHEMA_REGISTRY_PASSWORD": "p", "SCHEMA_REGISTRY_BEARER_TOKEN": "t"}
        )
    with pytest.raises(SettingsError, match="not https"):
        Settings.from_env({"SCHEMA_REGISTRY_SSL_CA_LOCATION": str(tmp_path / "ca.pem")})
    with pytest.raises(SettingsError, match="INPUT_FORMAT"):
        Settings.from_env({"INPUT_FORMAT": "xml"})
    s = Settings.from_env({"SCHEMA_REGISTRY_USERNAME": "u", "SCHEMA_REGISTRY_PASSWORD": "s3cret"})
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.describe())


def test_an_unknown_schema_id_is_asked_again_then_remembered_for_a_while() -> None:
    """A schema id the registry lacks: the first record waits for it (a schema registered a
    moment ago), the records after it with that id are asked once and never wait, until the
    memory expires."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from flows.adapters.registry import readers
    from flows.retry import Retries

    now = [0.0]
    sleeps: list[float] = []
    asked: list[bytes] = []
    reader = readers.FramedReader(
        "avro",
        SchemaRegistryClient({"url": "http://127.0.0.1:1"}),  # never reached: `_decode` is replaced
        "events",
        Retries(1.0),
        sleep=sleeps.append,
        clock=lambda: now[0],
    )

    def not_found(value: bytes) -> object:
        asked.append(value)
        raise SchemaRegistryError(404, 40403, "Schema not found")

    reader._decode = not_found
    value = b"\x00\x00\x00\x30\x39<payload>"

    def read() -> str:
        with pytest.raises(Unreadable) as err:
            reader.read(value)
        assert err.value.code == Code.SCHEMA_VIOLATION
        return err.value.message

    assert "unknown schema id 12345" in read()
    assert (len(asked), len(sleeps)) == (readers.NOT_FOUND_TRIES, readers.NOT_FOUND_TRIES - 1)
    asked.clear(), sleeps.clear()
    for _ in range(100):
        read()
    assert (len(asked), sleeps) == (100, []), "remembered: asked once each, no wait"
    now[0] += readers.NOT_FOUND_MEMORY_S + 1
    asked.clear()
    read()
    assert (len(asked), len(sleeps)) == (readers.NOT_FOUND_TRIES, readers.NOT_FOUND_TRIES - 1), "forgotten"
