"""Producer and consumer sides of the Schema Registry formats, for the demo, the tests and the
benchmark: sample events written as a producer of each format would write them (its own
schema, registered under `<topic>-value`), and enriched events read back as JSON.

The producers' schemas are a shop's, not the pipeline's: Avro `shop.Event` with
`occurred_at` a `timestamp-millis` and `payload` a record; Protobuf `shop.Event` with its
own field numbers, a `google.protobuf.Timestamp` and a `google.protobuf.Struct`; a JSON
Schema of the event as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, struct_pb2, timestamp_pb2
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass

from flows.adapters.registry.client import registry_client
from flows.adapters.registry.readers import FramedReader
from flows.adapters.registry.writers import utc_moment
from flows.retry import Retries
from flows.settings import Settings
from tools import sample

AVRO_EVENT = json.dumps(
    {
        "type": "record",
        "name": "Event",
        "namespace": "shop",
        "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "event_type", "type": "string"},
            {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "customer_id", "type": "string"},
            {
                "name": "payload",
                "type": {
                    "type": "record",
                    "name": "Payload",
                    "fields": [
                        {"name": "amount", "type": "double"},
                        {"name": "currency", "type": "string"},
                        {"name": "items", "type": "int"},
                        {"name": "note", "type": ["null", "string"], "default": None},
                    ],
                },
            },
            {"name": "source", "type": "string", "default": "sample"},
            {"name": "schema_version", "type": "int", "default": 1},
        ],
    }
)
JSON_EVENT = json.dumps(
    {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Event",
        "type": "object",
        "properties": {
            "event_id": {"type": "string"},
            "event_type": {"type": "string"},
            "occurred_at": {"type": "string"},
            "customer_id": {"type": "string"},
            "payload": {"type": "object"},
        },
    }
)


def protobuf_event_class() -> Any:
    """The shop's `shop.Event`: its own field numbers (the pipeline reads by the writer's)."""
    f = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="shop/event.proto", package="shop", syntax="proto3")
    fd.dependency.extend(["google/protobuf/timestamp.proto", "google/protobuf/struct.proto"])
    msg = fd.message_type.add(name="Event")
    for name, number, kind, type_name in (
        ("customer_id", 1, f.TYPE_STRING, None),
        ("event_id", 2, f.TYPE_STRING, None),
        ("event_type", 3, f.TYPE_STRING, None),
        ("occurred_at", 4, f.TYPE_MESSAGE, ".google.protobuf.Timestamp"),
        ("payload", 5, f.TYPE_MESSAGE, ".google.protobuf.Struct"),
        ("source", 6, f.TYPE_STRING, None),
        ("schema_version", 7, f.TYPE_INT32, None),
    ):
        field = msg.field.add(name=name, number=number, type=kind, label=f.LABEL_OPTIONAL)
        if type_name:
            field.type_name = type_name
    pool = DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(struct_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(fd)
    return GetMessageClass(pool.FindMessageTypeByName("shop.Event"))


PROTOBUF_EVENT = protobuf_event_class()


class EventWriter:
    """Writes sample events (their JSON documents) in `fmt` for `topic`, as a producer would."""

    def __init__(self, fmt: str, settings: Settings, topic: str, client: SchemaRegistryClient | None = None) -> None:
        self.fmt = fmt
        self.client = client or registry_client(settings)
        self.ctx = SerializationContext(topic, MessageField.VALUE)
        if fmt == "avro":
            self._ser: Any = AvroSerializer(self.client, AVRO_EVENT)
        elif fmt == "protobuf":
            self._ser = ProtobufSerializer(PROTOBUF_EVENT, self.client, {"use.deprecated.format": False})
        elif fmt == "json-schema":
            self._ser = JSONSerializer(JSON_EVENT, self.client)
        else:
            raise ValueError(fmt)

    def write(self, doc: dict[str, Any]) -> bytes:
        """The event in the format (registering the shop's schema on first use)."""
        if self.fmt == "avro":
            payload = dict(doc.get("payload") or {})
            obj: Any = {
                **doc,
                "occurred_at": utc_moment(str(doc["occurred_at"])),
                "payload": {
                    "amount": float(payload.get("amount", 0)),
                    "currency": str(payload.get("currency", "")),
                    "items": int(payload.get("items", 0)),
                    "note": payload.get("note"),
                },
            }
        elif self.fmt == "protobuf":
            obj = PROTOBUF_EVENT(
                customer_id=doc["customer_id"],
                event_id=doc["event_id"],
                event_type=doc["event_type"],
                source=str(doc.get("source", "")),
                schema_version=int(doc.get("schema_version", 0)),  # type: ignore[call-overload]
            )
            obj.occurred_at.FromDatetime(utc_moment(str(doc["occurred_at"])))
            obj.payload.update(doc.get("payload") or {})
        else:
            obj = doc
        value: bytes = self._ser(obj, self.ctx)
        return value


def reader(fmt: str, settings: Settings, topic: str) -> FramedReader:
    """Reads values of `fmt` back as JSON (the enriched events of OUTPUT_FORMAT=fmt)."""
    return FramedReader(fmt, registry_client(settings), topic, Retries(30))


def in_format(
    records: list[sample.SampleRecord],
    fmt: str,
    settings: Settings,
    topic: str,
    outcome: Callable[[sample.SampleRecord], str] | None = None,
) -> list[sample.SampleRecord]:
    """The sample as a producer of `fmt` writes it: each event that fits the format's schema
    in it; what can't (JSON that is not an event) as its bytes, which the pipeline finds not
    in the wire format (`invalid_format`); empty and oversized values as they were. Each
    record's `expect` is what the pipeline makes of it (`outcome`: what it made of the JSON)."""
    writer = EventWriter(fmt, settings, topic)
    out: list[sample.SampleRecord] = []
    for r in records:
        expect = outcome(r) if outcome is not None else r.expect
        if r.expect in ("empty_value", "payload_too_large"):
            out.append(sample.SampleRecord(r.key, r.value, r.headers, expect))
            continue
        try:
            doc = json.loads(r.value or b"")
            value = writer.write(doc) if isinstance(doc, dict) else None
        except Exception:  # noqa: BLE001 - not an event of the schema: stays as it came
            value = None
        if value is None:
            out.append(sample.SampleRecord(r.key, r.value, r.headers, "invalid_format"))
        else:
            out.append(sample.SampleRecord(r.key, value, r.headers, expect))
    return out
