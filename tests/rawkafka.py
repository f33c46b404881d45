"""Produce Kafka records that confluent-kafka's `Producer` cannot: header names that are
not UTF-8 (or hold NUL bytes), for tests of how the pipeline and its tools survive them.

Kafka's protocol calls header names strings, but brokers don't check them, so any client
can send arbitrary bytes; confluent-kafka only takes `str` names. This module goes to the
librdkafka bundled in the confluent-kafka wheel directly, through ctypes, and calls
`rd_kafka_produceva` with an `rd_kafka_headers_t` built byte for byte.

    with RawProducer("127.0.0.1:9092") as producer:
        producer.produce("events", 0, b"key", b"value", [(b"bad\\xff", b"1"), (b"null", None)])
        delivered = producer.flush()  # [(topic, partition, offset)] in produce order

Every delivery is checked: `flush` raises `DeliveryError` if any message was not
acknowledged. Only used by tests; the pipeline itself never produces such records.
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Sequence
from ctypes import CFUNCTYPE, POINTER, c_char_p, c_int, c_int32, c_int64, c_size_t, c_ssize_t, c_void_p
from types import TracebackType
from typing import Any

import confluent_kafka

Headers = Sequence[tuple[bytes, bytes | None]]  # a header value may be null

# rd_kafka_vtype_t (rdkafka.h); produceva takes a count, so no RD_KAFKA_VTYPE_END (0) entry
_TOPIC, _PARTITION, _VALUE, _KEY, _OPAQUE, _MSGFLAGS, _HEADERS = 1, 3, 4, 5, 6, 7, 10
_MSG_F_COPY = 0x2  # librdkafka copies key and value: our buffers may go right after the call
_PRODUCER = 0  # rd_kafka_type_t RD_KAFKA_PRODUCER


class _VU(ctypes.Structure):
    """rd_kafka_vu_t: `int vtype` then a 64-byte union, 8-aligned (it holds pointers)."""

    _fields_ = [("vtype", c_int), ("_align", c_int), ("u", ctypes.c_char * 64)]


class _Message(ctypes.Structure):
    """The head of rd_kafka_message_t, as a delivery report sees it."""

    _fields_ = [
        ("err", c_int),
        ("rkt", c_void_p),
        ("partition", c_int32),
        ("payload", c_void_p),
        ("len", c_size_t),
        ("key", c_void_p),
        ("key_len", c_size_t),
        ("offset", c_int64),
        ("opaque", c_void_p),
    ]


_DR_CB = CFUNCTYPE(None, c_void_p, POINTER(_Message), c_void_p)


class DeliveryError(RuntimeError):
    """A message was not acknowledged by the broker (or not handed over at all)."""


def _library_path() -> str:
    libs = os.path.join(os.path.dirname(os.path.dirname(confluent_kafka.__file__)), "confluent_kafka.libs")
    found = sorted(glob.glob(os.path.join(libs, "librdkafka*.so*")))
    if not found:
        raise RuntimeError(f"no librdkafka in {libs}: is confluent-kafka installed from its wheel?")
    return found[0]


def _load() -> Any:
    lib = ctypes.CDLL(_library_path())
    sigs: dict[str, tuple[Any, list[Any]]] = {
        "rd_kafka_conf_new": (c_void_p, []),
        "rd_kafka_conf_set": (c_int, [c_void_p, c_char_p, c_char_p, c_char_p, c_size_t]),
        "rd_kafka_conf_set_dr_msg_cb": (None, [c_void_p, _DR_CB]),
        "rd_kafka_conf_destroy": (None, [c_void_p]),
        "rd_kafka_new": (c_void_p, [c_int, c_void_p, c_char_p, c_size_t]),
        "rd_kafka_destroy": (None, [c_void_p]),
        "rd_kafka_headers_new": (c_void_p, [c_size_t]),
        "rd_kafka_headers_destroy": (None, [c_void_p]),
        "rd_kafka_header_add": (c_int, [c_void_p, c_char_p, c_ssize_t, c_char_p, c_ssize_t]),
        "rd_kafka_produceva": (c_void_p, [c_void_p, POINTER(_VU), c_size_t]),
        "rd_kafka_error_string": (c_char_p, [c_void_p]),
        "rd_kafka_error_destroy": (None, [c_void_p]),
        "rd_kafka_flush": (c_int, [c_void_p, c_int]),
        "rd_kafka_err2str": (c_char_p, [c_int]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _vu(vtype: int, *fields: ctypes._SimpleCData) -> _VU:  # type: ignore[name-defined]
    """One rd_kafka_vu_t: the union's members are laid out from its start, in order."""
    vu = _VU(vtype=vtype)
    at = ctypes.addressof(vu) + _VU.u.offset
    for f in fields:
        ctypes.memmove(at, ctypes.addressof(f), ctypes.sizeof(f))
        at += ctypes.sizeof(f)
    return vu


class RawProducer:
    """A producer that takes header names as bytes. Not thread-safe; one per test is fine.

    `bootstrap` is `bootstrap.servers`; `extra_conf` any other librdkafka settings (strings),
    e.g. {"message.max.bytes": "2000000"}. Idempotent, `acks=all` unless overridden."""

    def __init__(self, bootstrap: str, extra_conf: dict[str, str] | None = None) -> None:
        self._lib = _load()
        self._reports: dict[int, tuple[int, str, int, int]] = {}  # id -> (err, topic, partition, offset)
        self._topics: dict[int, str] = {}
        self._next_id = 1
        self._callback = _DR_CB(self._on_delivery)  # kept referenced for the handle's lifetime
        conf = self._lib.rd_kafka_conf_new()
        errstr = ctypes.create_string_buffer(512)
        settings = {"bootstrap.servers": bootstrap, "enable.idempotence": "true", "acks": "all", **(extra_conf or {})}
        for name, value in settings.items():
            if self._lib.rd_kafka_conf_set(conf, name.encode(), str(value).encode(), errstr, len(errstr)) != 0:
                self._lib.rd_kafka_conf_destroy(conf)
                raise ValueError(f"librdkafka setting {name}={value!r}: {errstr.value.decode()}")
        self._lib.rd_kafka_conf_set_dr_msg_cb(conf, self._callback)
        self._rk = self._lib.rd_kafka_new(_PRODUCER, conf, errstr, len(errstr))  # takes `conf` on success
        if not self._rk:
            self._lib.rd_kafka_conf_destroy(conf)
            raise RuntimeError(f"rd_kafka_new: {errstr.value.decode()}")

    def _on_delivery(self, _rk: int, msg: Any, _opaque: int) -> None:
        m = msg.contents
        ident = int(m.opaque or 0)
        self._reports[ident] = (m.err, self._topics.get(ident, "?"), m.partition, m.offset)

    def produce(
        self, topic: str, partition: int | None, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> None:
        """Queue one record; `partition` None lets the partitioner choose; a None key or
        value is a null one; a header value None is a null value. Names and values are
        taken byte for byte (NUL bytes included)."""
        if self._rk is None:
            raise RuntimeError("the producer is closed")
        hdrs = self._lib.rd_kafka_headers_new(max(1, len(headers)))
        for name, hvalue in headers:
            self._lib.rd_kafka_header_add(hdrs, name, len(name), hvalue, -1 if hvalue is None else len(hvalue))
        ident = self._next_id
        self._next_id += 1
        keep: list[Any] = [ctypes.c_char_p(topic.encode())]  # alive until produceva returns
        items = [
            _vu(_TOPIC, c_void_p(ctypes.cast(keep[0], c_void_p).value)),
            _vu(_HEADERS, c_void_p(hdrs)),
            _vu(_MSGFLAGS, c_int(_MSG_F_COPY)),
            _vu(_OPAQUE, c_void_p(ident)),
        ]
        if partition is not None:
            items.append(_vu(_PARTITION, c_int32(partition)))
        for vtype, data in ((_VALUE, value), (_KEY, key)):
            if data is not None:
                buf = ctypes.create_string_buffer(data, len(data))
                keep.append(buf)
                items.append(_vu(vtype, c_void_p(ctypes.addressof(buf)), c_size_t(len(data))))
        array = (_VU * len(items))(*items)
        error = self._lib.rd_kafka_produceva(self._rk, array, len(items))
        if error:  # the headers stay ours when the call fails
            text = self._lib.rd_kafka_error_string(error).decode()
            self._lib.rd_kafka_error_destroy(error)
            self._lib.rd_kafka_headers_destroy(hdrs)
            raise DeliveryError(f"produce to {topic}: {text}")
        self._topics[ident] = topic

    def flush(self, timeout: float = 30.0) -> list[tuple[str, int, int]]:
        """Wait until every queued record is acknowledged; (topic, partition, offset) of each
        record produced since the last flush, in produce order. Raises DeliveryError when
        any was refused or not acknowledged in time."""
        if self._rk is None:
            raise RuntimeError("the producer is closed")
        waiting = self._lib.rd_kafka_flush(self._rk, int(timeout * 1000))
        ids = sorted(self._topics)
        failed = [(i, self._reports[i][0]) for i in ids if i in self._reports and self._reports[i][0] != 0]
        unreported = [i for i in ids if i not in self._reports]
        out = [self._reports[i][1:] for i in ids if i in self._reports]
        self._topics.clear()
        self._reports.clear()
        if waiting or failed or unreported:
            first = self._lib.rd_kafka_err2str(failed[0][1]).decode() if failed else "not acknowledged in time"
            raise DeliveryError(f"{len(failed) + len(unreported)} of {len(ids)} records not delivered: {first}")
        return out

    def close(self) -> None:
        if self._rk is not None:
            self._lib.rd_kafka_flush(self._rk, 10_000)
            self._lib.rd_kafka_destroy(self._rk)
            self._rk = None

    def __enter__(self) -> RawProducer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
