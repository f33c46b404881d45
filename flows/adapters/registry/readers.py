"""Reading input values in a Schema Registry format (INPUT_FORMAT avro, protobuf or
json-schema): the Confluent wire format (a magic byte 0, the schema id in 4 bytes, for
Protobuf the message indexes, then the payload), decoded with the writer's schema fetched
from the registry by id (the client caches it), and rendered as the event's JSON, which the
pipeline then validates as it validates a JSON input (flows.core.decode.decode_framed).

Avro and JSON Schema use confluent_kafka's deserializers as they are. Protobuf's needs the
reader's compiled message class, which a pipeline that reads whatever its producers
registered doesn't have: here the message is parsed with the writer's own descriptor, taken
from the registered schema with the deserializer's helpers.

What becomes what: a value shorter than the header, or whose first byte is not 0, is
`invalid_format`; a schema id the registry does not have (asked again a few times: a
schema registered a moment ago may not be visible everywhere yet) or bytes that don't
decode with their schema are `schema_violation`; the registry unreachable is an outage,
retried under RETRY_DEADLINE_SECONDS like every dependency, never a dead letter.
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.common.serde import SchemaId
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.json_schema import JSONDeserializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from jsonschema import ValidationError

from flows.adapters.registry.client import NOT_FOUND, classify
from flows.core.decode import Unreadable
from flows.core.model import Code
from flows.retry import Retries

HEADER_BYTES = 5  # the magic byte and the 4-byte schema id
NOT_FOUND_TRIES = 3  # a schema id the registry does not know: asked this often
NOT_FOUND_WAIT_S = 0.5
# an id found missing after those tries fails at once for this long (a burst of records with
# ids nobody registered must not cost each of them the tries' waits)
NOT_FOUND_MEMORY_S = 30.0
# what the deserializers raise for bytes that don't fit their schema (anything else is not
# the record's: an outage past the deadline, or a bug, which becomes `internal_error`)
UNDECODABLE = (
    SerializationError,
    DecodeError,
    EOFError,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    OverflowError,
    struct.error,
)


class Reader(Protocol):
    """Turns a value in its format into the event's JSON, or raises `Unreadable`."""

    def read(self, value: bytes) -> bytes:
        """The event as JSON."""


class _WriterProtobuf(ProtobufDeserializer):
    """Parses a Protobuf value with the writer's message, found in the registered schema by
    the value's message indexes (the deserializer's own helpers do the lookups)."""

    def __init__(self, client: SchemaRegistryClient) -> None:
        # the message type is required but not used here: the writer's is
        super().__init__(struct_pb2.Struct, {"use.deprecated.format": False}, client)
        self._classes: dict[tuple[int, tuple[int, ...]], Callable[[], Message]] = {}

    def message(self, value: bytes) -> Message:
        schema_id = SchemaId("PROTOBUF")
        try:
            payload = schema_id.from_bytes(io.BytesIO(value))
        except Exception as exc:  # noqa: BLE001 - the framing is unreadable
            raise Unreadable(Code.INVALID_FORMAT, f"not in the Protobuf wire format: {exc}") from None
        indexes = tuple(schema_id.message_indexes or [0])
        key = (schema_id.id or 0, indexes)
        make = self._classes.get(key)
        if make is None:
            schema = self._get_writer_schema(schema_id, None, fmt="serialized")
            fd_proto, pool = self._get_parsed_schema(schema)
            desc = self._get_message_desc(pool, pool.FindFileByName(fd_proto.name), list(indexes))
            make = self._classes[key] = GetMessageClass(desc)
        msg = make()
        msg.ParseFromString(payload.read())
        return msg


def _json(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


def _field_of(exc: BaseException) -> str | None:
    """The JSON path of the field at fault, where the decoder tells it: JSON Schema's
    validator does (the serializer raises from its ValidationError); Avro's and Protobuf's
    decoders only say the bytes ended or did not parse."""
    cause = exc.__cause__ or exc.__context__
    path = getattr(cause, "json_path", None) if isinstance(cause, ValidationError) else None
    return path if isinstance(path, str) and path != "$" else None


class FramedReader:
    """A Schema Registry format's reader: the framing checked, then `decode(value)` under the
    retry policy (the registry may be away), its result rendered as JSON."""

    def __init__(
        self,
        fmt: str,
        client: SchemaRegistryClient,
        topic: str,
        retries: Retries,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fmt = fmt
        self._retries = retries
        self._sleep = sleep
        self._clock = clock
        self._missing: dict[int, float] = {}  # schema id -> when the registry last lacked it
        ctx = SerializationContext(topic, MessageField.VALUE)
        self._decode: Callable[[bytes], Any]
        if fmt == "avro":
            avro = AvroDeserializer(client)
            self._decode = lambda value: avro(value, ctx)
        elif fmt == "json-schema":
            js = JSONDeserializer(None, schema_registry_client=client)
            self._decode = lambda value: js(value, ctx)
        elif fmt == "protobuf":
            proto = _WriterProtobuf(client)
            self._decode = lambda value: json_format.MessageToDict(
                proto.message(value), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        else:
            raise ValueError(f"not a Schema Registry format: {fmt}")

    def read(self, value: bytes) -> bytes:
        """The event as JSON, or `Unreadable`."""
        if len(value) < HEADER_BYTES:
            raise Unreadable(
                Code.INVALID_FORMAT,
                f"the value is {len(value)} bytes, shorter than the {HEADER_BYTES}-byte header of the Schema "
                f"Registry wire format (INPUT_FORMAT={self.fmt})",
            )
        if value[0] != 0:
            raise Unreadable(
                Code.INVALID_FORMAT,
                f"the value's first byte is {value[0]}, not the magic byte 0 of the Schema Registry wire format "
                f"(INPUT_FORMAT={self.fmt})",
            )
        schema_id = int.from_bytes(value[1:HEADER_BYTES], "big")
        missing_since = self._missing.get(schema_id)
        tries = NOT_FOUND_TRIES
        if missing_since is not None and self._clock() - missing_since < NOT_FOUND_MEMORY_S:
            tries = 1  # asked once more (cheap: it may have come), never waited for
        for attempt in range(tries):
            try:
                decoded = self._retries.call("schema_registry read", lambda: self._decode(value), classify)
                return _json(decoded)
            except Unreadable:
                raise
            except SchemaRegistryError as exc:
                if exc.http_status_code != NOT_FOUND:
                    raise
                if attempt + 1 < tries:
                    self._sleep(NOT_FOUND_WAIT_S)
            except UNDECODABLE as exc:  # the bytes don't decode with their schema
                raise Unreadable(
                    Code.SCHEMA_VIOLATION,
                    f"the value does not decode with its schema (id {schema_id}, {self.fmt}): "
                    f"{type(exc).__name__}: {exc}"[:900],
                    _field_of(exc),
                ) from None
        if len(self._missing) > 10_000:
            self._missing.clear()  # hostile ids by the thousand: memory stays bounded
        self._missing[schema_id] = self._clock()
        raise Unreadable(
            Code.SCHEMA_VIOLATION,
            f"unknown schema id {schema_id}: the Schema Registry has no schema with that id ({self.fmt})",
        )
