"""Writing enriched events in a Schema Registry format (OUTPUT_FORMAT avro, protobuf or
json-schema) with confluent_kafka's serializers: the pipeline's enriched event (its JSON,
as `flows.core.outcome` builds it) mapped to the format's schema (`schemas/`), registered
under SUBJECT_NAME_STRATEGY's subject when the flow starts (a schema the registry refuses
stops the flow there, exit 2) and framed in the Confluent wire format.

The mapping: the contract's fields by name; `occurred_at` and `enriched_at` as timestamps
(Avro `timestamp-micros`, Protobuf `google.protobuf.Timestamp`, text in JSON Schema); the
input's `payload` object as JSON text (Avro) or a `google.protobuf.Struct`; the input's other
members, which JSON passes through, as JSON texts in `attributes` (JSON Schema keeps them as
members); `customer` a record of its four fields.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka.schema_registry import (
    SchemaRegistryClient,
    record_subject_name_strategy,
    topic_record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, struct_pb2, timestamp_pb2
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from flows.adapters.registry.client import classify
from flows.retry import Retries

SCHEMAS = Path(__file__).resolve().parent / "schemas"
AVRO_SCHEMA = (SCHEMAS / "enriched.avsc").read_text()
JSON_SCHEMA = (SCHEMAS / "enriched.schema.json").read_text()
KNOWN = ("event_id", "event_type", "occurred_at", "customer_id", "payload", "customer", "enriched_at")
STRATEGIES: dict[str, Callable[..., str | None]] = {
    "topic": topic_subject_name_strategy,
    "record": record_subject_name_strategy,
    "topic-record": topic_record_subject_name_strategy,
}
_DECODE = msgspec.json.Decoder()


def _field(name: str, number: int, kind: int, type_name: str | None = None, repeated: bool = False) -> Any:
    f = descriptor_pb2.FieldDescriptorProto(name=name, number=number, type=kind)
    f.label = f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL
    if type_name is not None:
        f.type_name = type_name
    return f


def protobuf_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """schemas/enriched.proto as a descriptor (the runtime can't compile .proto text)."""
    fd = descriptor_pb2.FileDescriptorProto(name="enrichment/enriched.proto", package="enrichment", syntax="proto3")
    fd.dependency.extend(["google/protobuf/struct.proto", "google/protobuf/timestamp.proto"])
    string, message = descriptor_pb2.FieldDescriptorProto.TYPE_STRING, descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    customer = fd.message_type.add(name="Customer")
    customer.field.extend(_field(n, i + 1, string) for i, n in enumerate(("name", "segment", "country", "status")))
    event = fd.message_type.add(name="EnrichedEvent")
    entry = event.nested_type.add(name="AttributesEntry")
    entry.field.extend([_field("key", 1, string), _field("value", 2, string)])
    entry.options.map_entry = True
    event.field.extend(
        [
            _field("event_id", 1, string),
            _field("event_type", 2, string),
            _field("occurred_at", 3, message, ".google.protobuf.Timestamp"),
            _field("customer_id", 4, string),
            _field("payload", 5, message, ".google.protobuf.Struct"),
            _field("attributes", 6, message, ".enrichment.EnrichedEvent.AttributesEntry", repeated=True),
            _field("customer", 7, message, ".enrichment.Customer"),
            _field("enriched_at", 8, message, ".google.protobuf.Timestamp"),
        ]
    )
    return fd


def _enriched_class() -> Any:
    pool = DescriptorPool()
    pool.AddSerializedFile(struct_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(protobuf_descriptor())
    return GetMessageClass(pool.FindMessageTypeByName("enrichment.EnrichedEvent"))


ENRICHED_EVENT = _enriched_class()


def utc_moment(text: str) -> dt.datetime:
    """An RFC 3339 timestamp of the event as an aware UTC datetime (what the serializers take)."""
    return msgspec.convert(text, dt.datetime).astimezone(dt.UTC)


def _attributes(doc: dict[str, Any]) -> dict[str, str]:
    return {k: msgspec.json.encode(v).decode() for k, v in doc.items() if k not in KNOWN}


def to_avro(doc: dict[str, Any]) -> dict[str, Any]:
    """The enriched event's JSON as the Avro record."""
    return {
        "event_id": doc["event_id"],
        "event_type": doc["event_type"],
        "occurred_at": utc_moment(doc["occurred_at"]),
        "customer_id": doc["customer_id"],
        "payload": msgspec.json.encode(doc.get("payload", {})).decode(),
        "attributes": _attributes(doc),
        "customer": doc["customer"],
        "enriched_at": utc_moment(doc["enriched_at"]),
    }


def to_protobuf(doc: dict[str, Any]) -> Message:
    """The enriched event's JSON as the Protobuf message."""
    msg = ENRICHED_EVENT()
    msg.event_id = doc["event_id"]
    msg.event_type = doc["event_type"]
    msg.occurred_at.FromDatetime(utc_moment(doc["occurred_at"]))
    msg.customer_id = doc["customer_id"]
    msg.payload.update(doc.get("payload", {}))
    msg.attributes.update(_attributes(doc))
    for name, value in doc["customer"].items():
        setattr(msg.customer, name, value)
    msg.enriched_at.FromDatetime(utc_moment(doc["enriched_at"]))
    return msg


class FramedWriter:
    """Serializes enriched events for `topic` in `fmt`, the schema registered by its
    serializer under the strategy's subject on the first write (`register`, at start)."""

    def __init__(self, fmt: str, client: SchemaRegistryClient, topic: str, strategy: str, retries: Retries) -> None:
        self.fmt = fmt
        self._retries = retries
        self._ctx = SerializationContext(topic, MessageField.VALUE)
        conf: dict[str, Any] = {"auto.register.schemas": True, "subject.name.strategy": STRATEGIES[strategy]}
        self._convert: Callable[[dict[str, Any]], Any]
        if fmt == "avro":
            self._serializer: Any = AvroSerializer(client, AVRO_SCHEMA, conf=conf)
            self._convert = to_avro
        elif fmt == "protobuf":
            self._serializer = ProtobufSerializer(ENRICHED_EVENT, client, {**conf, "use.deprecated.format": False})
            self._convert = to_protobuf
        elif fmt == "json-schema":
            self._serializer = JSONSerializer(JSON_SCHEMA, client, conf=conf)
            self._convert = lambda doc: doc
        else:
            raise ValueError(f"not a Schema Registry format: {fmt}")

    def write(self, enriched: bytes) -> bytes:
        """The enriched event (its JSON) in the output format."""
        obj = self._convert(_DECODE.decode(enriched))
        framed: bytes = self._retries.call("schema_registry write", lambda: self._serializer(obj, self._ctx), classify)
        return framed

    def subject(self) -> str:
        """The subject the schema is registered under."""
        record = {"avro": "enrichment.EnrichedEvent", "protobuf": "enrichment.EnrichedEvent"}.get(
            self.fmt, "EnrichedEvent"
        )
        name = self._serializer._subject_name_func(self._ctx, record)
        return str(name)


SAMPLE = (
    b'{"event_id":"sample","event_type":"sample","occurred_at":"2026-01-01T00:00:00Z","customer_id":"C0",'
    b'"payload":{},"customer":{"name":"n","segment":"s","country":"c","status":"a"},'
    b'"enriched_at":"2026-01-01T00:00:00Z"}'
)
