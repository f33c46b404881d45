"""Kafka record headers read as bytes, whatever their names hold.

Kafka's protocol calls header names strings, but the broker does not check them, and any
producer can send a name that is not UTF-8. confluent-kafka (2.16.1) decodes names inside
`Message.headers()` and does not handle the error: the call fails with a SystemError (or,
once the interpreter has specialised the call site in a busy loop, returns a list holding
a NULL and leaves the error to surface at some later call), and the message's raw headers
are freed. It also cuts a name at its first NUL byte.

So the source reads a message's headers before anything calls `headers()`: from the
`rd_kafka_headers_t` the message object still holds, through librdkafka's own structures
(`rd_kafka_headers_s` is an `rd_list_t` of `rd_kafka_header_t`, each with its name's
and value's sizes; stable across librdkafka releases). Memory is read through one
memoryview over the address space: a struct unpack per field, where a ctypes call per
field would cost several times more.

Every layout this relies on is checked before it is trusted: the message object's on the
process's first message (its topic and value objects, partition and offset must read back
as the message reports them), each header's on every read (its value sits right after its
name). If a check fails, `Message.headers()` is used for records whose names are all
UTF-8, and a record with a name that is not fails as `invalid_headers` without headers.

Names that are not UTF-8 are escaped (`flows.core.headers`) so they can be written again.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import struct
import sys
import threading
from typing import Any

from flows.core.headers import escape_name, escape_nul, invalid_names_message
from flows.core.model import Headers

log = logging.getLogger(__name__)


# confluent-kafka's Message struct on 64-bit CPython: PyObject_HEAD (16 bytes), then the
# PyObject pointers topic, value, key, headers, then rd_kafka_headers_t *c_headers,
# PyObject *error, int32 partition, int64 offset (aligned)
_TOPIC, _VALUE, _HEADERS_OBJ, _C_HEADERS, _PARTITION, _OFFSET = 16, 24, 40, 48, 64, 72
# rd_kafka_header_t: size_t ser_size, value_size, name_size; char *value; char name[]
_NAME_AT = 32
_MAX_HEADERS = 1 << 20
_PTR = struct.Struct("<Q").unpack_from
_CONVERTED_AND_RAW = struct.Struct("<QQ").unpack_from  # the headers object, then c_headers
_INT32 = struct.Struct("<i").unpack_from
_INT64 = struct.Struct("<q").unpack_from
_LIST = struct.Struct("<iiQ").unpack_from  # rd_list_t: int size, int cnt, void **elems
_HEADER = struct.Struct("<QQQQ").unpack_from


class LayoutError(RuntimeError):
    """A structure does not look the way this module expects."""


class HeaderReader:
    """Reads `(headers, header_error)` from confluent-kafka messages; one per process."""

    def __init__(self) -> None:
        self._mem: memoryview | None = None
        self._layout_ok: bool | None = None
        self._lock = threading.Lock()

    def read(self, msg: Any) -> tuple[Headers, str | None]:
        """The message's headers, names as text, and the `invalid_headers` message if any."""
        mem = self._mem
        if mem is None:
            if self._layout_ok is False or not self._usable(msg):
                return self._fallback(msg)
            mem = self._mem
            assert mem is not None
        converted, pointer = _CONVERTED_AND_RAW(mem, id(msg) + _HEADERS_OBJ)
        if not pointer:
            return self._fallback(msg) if converted else ([], None)
        try:
            return _read(mem, pointer)
        except LayoutError as exc:
            log.error("reading Kafka headers: %s; reading them through the client from now on", exc)
            self._mem, self._layout_ok = None, False
            return self._fallback(msg)

    def _fallback(self, msg: Any) -> tuple[Headers, str | None]:
        try:
            return list(msg.headers() or []), None
        except (SystemError, UnicodeDecodeError):
            return [], (
                "a header name is not UTF-8 (Kafka header names are strings); this build of the Kafka "
                "client could not read the headers, so the dead letter carries none of them"
            )

    def _usable(self, msg: Any) -> bool:
        if self._layout_ok is None:
            with self._lock:
                if self._layout_ok is None:
                    self._layout_ok = self._check(msg)
        return bool(self._layout_ok)

    def _check(self, msg: Any) -> bool:
        """The message object's layout is the expected one (see the module's docstring)."""
        if platform.python_implementation() != "CPython" or sys.maxsize <= 2**32 or sys.byteorder != "little":
            return False
        mem = memoryview((ctypes.c_ubyte * (1 << 47)).from_address(0)).cast("B")
        address = id(msg)
        value = msg.value()
        ok: bool = (
            _PTR(mem, address + _TOPIC)[0] == id(msg.topic())
            and _PTR(mem, address + _VALUE)[0] == (id(value) if value is not None else 0)
            and _INT32(mem, address + _PARTITION)[0] == msg.partition()
            and _INT64(mem, address + _OFFSET)[0] == msg.offset()
            and _PTR(mem, address + _HEADERS_OBJ)[0] == 0
        )
        if ok:
            self._mem = mem
        else:
            log.warning(
                "the Kafka client's message layout is not the expected one: header names that are "
                "not UTF-8 can't be kept (records with them still fail as invalid_headers)"
            )
        return ok


def _read(mem: memoryview, pointer: int) -> tuple[Headers, str | None]:
    """The headers of one rd_kafka_headers_t, names decoded (escaped when they must be)."""
    size, count, elems = _LIST(mem, pointer)
    if not 0 <= count <= size or count > _MAX_HEADERS or (count and not elems):
        raise LayoutError(f"a header list of {count} of {size}")
    headers: Headers = []
    bad = 0
    for i in range(count):
        (header,) = _PTR(mem, elems + 8 * i)
        ser_size, value_size, name_size, value_at = _HEADER(mem, header)
        name_at = header + _NAME_AT
        if value_at:
            if value_at != name_at + name_size + 1:
                raise LayoutError("a header's value is not where its name ends")
            value: bytes | None = mem[value_at : value_at + value_size].tobytes()
        else:
            if name_size + 2 > ser_size:  # a name and two varints at least
                raise LayoutError("a header's name is longer than the header")
            value = None
        raw = mem[name_at : name_at + name_size].tobytes()
        try:
            name = raw.decode()
        except UnicodeDecodeError:
            bad += 1
            name = escape_name(raw)
        else:
            if "\x00" in name:
                name = escape_nul(name)
        headers.append((name, value))
    return headers, invalid_names_message(bad) if bad else None


READER = HeaderReader()
