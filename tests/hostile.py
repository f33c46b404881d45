"""Hostile input: hypothesis strategies for Kafka records an upstream bug or attacker could
send, and the checks every one of them must pass once the pipeline has run.

Records have arbitrary bytes for key and value, arbitrary header names and values as bytes
(names that are not UTF-8 or hold NUL, the pipeline's own header names), sizes at and
around every limit (the value limit +-1 byte, with and without large headers), ids with
every class of code point (NUL, controls, lone surrogates as JSON escapes or as raw bytes,
combining marks, emoji), deep nesting, duplicate members, extreme timestamps, and members
the output sets itself. Valid records go between them: each must come out enriched.

The campaign keeps values small by running with `MAX_VALUE_BYTES` = `LIMIT`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from flows.core.jsonmembers import member_spans, raw_members
from flows.core.sizes import record_size, topic_sizes_to_create
from tools import sample

LIMIT = 4096  # MAX_VALUE_BYTES of the campaign
INPUT_MAX = topic_sizes_to_create(LIMIT)[0]  # what the campaign's input topic accepts
N_CUSTOMERS = 50
CUSTOMERS = [sample.customer_id(i) for i in range(N_CUSTOMERS)]
RESERVED = [
    b"source.topic",
    b"source.partition",
    b"source.offset",
    b"source.timestamp",
    b"error.code",
    b"error.stage",
    b"error.message",
    b"error.field",
    b"error.omitted",
    b"failed_at",
    b"replay.of",
]


@dataclass(frozen=True)
class Hostile:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[bytes, bytes | None]]
    valid: bool = False  # built valid, for a known customer, with plain headers: must be enriched
    kind: str = ""  # what the generator meant to test, for the report

    def expected_code(self) -> str | None:
        """The code this record must get when it can be told from its bytes alone; None
        when any code but internal_error (or enrichment) is right."""
        if self.valid:
            return "enriched"
        if not self.value:
            return "empty_value"
        if len(self.value) > LIMIT:
            return "payload_too_large"
        if any(not _utf8(name) for name, _ in self.headers):
            return "invalid_headers"
        return None


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- building blocks

# every class of code point; surrogates (Cs) can't be encoded: they go in as JSON escapes
# (json.dumps with ensure_ascii) or as the bytes "surrogatepass" makes (not UTF-8)
hostile_text = st.text(st.characters(codec=None, categories=None), max_size=70) | st.sampled_from(
    [
        "\u0000",
        "X\u0000",
        "\u0000" * 64,
        "\x1b[2J",
        "a\r\nb",
        "\u202e",
        "e\u0301",
        "😀" * 16,
        "😀" * 17,
        "\ud800",
        "\udfff",
        "\ud83d\ude00",
        "\ufeff",
        "\uffff",
        "' OR 1=1 --",
        "x" * 64,
        "x" * 65,
        "",
        " ",
    ]
)
offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
moments = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=offsets)
timestamps = st.sampled_from(
    [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999Z",
        "0001-01-01T13:59:59-14:00",
        "2024-02-30T00:00:00Z",
        "2024-01-01T00:00:00",
        "2024-01-01",
        "2024-01-01T24:00:00Z",
        "2016-12-31T23:59:60Z",
        "2024-01-01T00:00:00+24:00",
        "2024-01-01T00:00:00.1234567890Z",
        "",
        "now",
    ]
) | moments.map(lambda d: d.isoformat())
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | hostile_text
    | st.sampled_from([0.1000000000000000055511151231257827, 1e308, -0.0, 2**64, -(2**63)])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=8,
)
raw_numbers = st.sampled_from(
    [
        b"1E2",
        b"-0",
        b"0.1000000000000000055511151231257827",
        b"1e-400",
        b"1E+999",
        b"123456789012345678901234567890",
        b"-0.0e0",
    ]
)
spacing = st.sampled_from(["", " ", "\n", "\t\r\n "])


def dumps(value: Any, ascii_only: bool) -> bytes:
    """JSON text; lone surrogates become escapes, or raw bytes that are not UTF-8."""
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")


def obj(members: list[tuple[str, bytes]], ws: str = "", ascii_only: bool = True) -> bytes:
    """An object from (name, value text) pairs, duplicates and member order as given."""
    parts = [f"{ws}".encode() + dumps(name, ascii_only) + f"{ws}:{ws}".encode() + value for name, value in members]
    return b"{" + b",".join(parts) + ws.encode() + b"}"


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


@st.composite
def valid_record(draw: st.DrawFn, index: int = 0) -> Hostile:
    """A valid event for a known customer, with odd but legal extras; headers plain."""
    cid = draw(st.sampled_from(CUSTOMERS))
    ascii_only = draw(st.booleans())
    members: list[tuple[str, bytes]] = [
        (
            "event_id",
            dumps(f"ok-{draw(st.integers(0, 10**9))}-{draw(hostile_text.filter(_encodable))}"[:128], ascii_only),
        ),
        ("event_type", dumps(draw(st.text(min_size=1, max_size=20).filter(_encodable)), ascii_only)),
        ("occurred_at", dumps(draw(moments).isoformat(), True)),
        ("customer_id", dumps(cid, ascii_only)),
    ]
    if draw(st.booleans()):
        payload = st.dictionaries(
            st.text(max_size=8).filter(_encodable), json_values.filter(_encodable_value), max_size=3
        )
        members.append(("payload", dumps(draw(payload), ascii_only)))
    for name in draw(st.lists(st.text(max_size=10).filter(_encodable), max_size=3, unique=True)):
        if name in {"event_id", "event_type", "occurred_at", "customer_id", "payload", "customer", "enriched_at"}:
            continue
        members.append(
            (
                name,
                draw(raw_numbers)
                if draw(st.booleans())
                else dumps(draw(json_values.filter(_encodable_value)), ascii_only),
            )
        )
    if draw(st.booleans()):
        members.append(
            (
                draw(st.sampled_from(["customer", "enriched_at"])),
                dumps(draw(json_values.filter(_encodable_value)), True),
            )
        )
    required = members[:4]
    draw(st.randoms()).shuffle(members)
    value = obj(members, draw(spacing), ascii_only)
    if len(value) > LIMIT:
        value = obj(required, "", ascii_only)
    names = draw(
        st.lists(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12), max_size=3)
    )
    headers = [(n.encode(), draw(st.none() | st.binary(max_size=30))) for n in names if n.encode() not in RESERVED]
    key = draw(st.none() | st.binary(max_size=20))
    return Hostile(key, value, headers, valid=True, kind="valid")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _encodable_value(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        return False
    return "NaN" not in json.dumps(value) and "Infinity" not in json.dumps(value)


def _event(draw: st.DrawFn, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "h-1",
        "event_type": "t",
        "occurred_at": "2026-01-01T00:00:00Z",
        "customer_id": draw(st.sampled_from(CUSTOMERS)),
    }
    base.update(fields)
    return base


@st.composite
def hostile_value(draw: st.DrawFn) -> tuple[bytes | None, str]:
    # hypothesis favours the first choices: the ones with most to explore come first
    kind = draw(
        st.sampled_from(
            ["id", "deep", "duplicate", "timestamp", "size", "replace", "field", "type", "bytes", "empty", "null"]
        )
    )
    ascii_only = draw(st.booleans())
    if kind == "null":
        return None, kind
    if kind == "empty":
        return b"", kind
    if kind == "bytes":
        return draw(
            st.binary(max_size=300) | st.sampled_from([b"\xef\xbb\xbf{}", b"\x00", b"{", b"null", b"[]", b"\xff" * 10])
        ), kind
    if kind == "size":  # at and around the value limit: random bytes, or a valid event padded
        size = draw(st.sampled_from([LIMIT - 1, LIMIT, LIMIT + 1, LIMIT + 2, 2 * LIMIT]))
        if draw(st.booleans()):
            return draw(st.randoms(use_true_random=False)).randbytes(size), kind
        doc = dumps(_event(draw, payload={"pad": ""}), True)
        return doc.replace(b'"pad": ""', b'"pad": "' + b"p" * max(0, size - len(doc)) + b'"'), kind
    if kind == "id":
        field = draw(st.sampled_from(["customer_id", "event_id", "event_type"]))
        return dumps(_event(draw, **{field: draw(hostile_text)}), ascii_only), f"id:{field}"
    if kind == "field":
        field = draw(st.sampled_from(["customer_id", "event_id", "event_type", "occurred_at", "payload"]))
        doc = _event(draw)
        if draw(st.booleans()):
            doc.pop(field, None)
        else:
            doc[field] = draw(json_values)
        return dumps(doc, ascii_only), f"field:{field}"
    if kind == "timestamp":
        return dumps(_event(draw, occurred_at=draw(timestamps)), True), kind
    if kind == "duplicate":
        doc = _event(draw)
        members = [(k, dumps(v, True)) for k, v in doc.items()]
        name = draw(st.sampled_from([*doc, "extra"]))
        members.insert(draw(st.integers(0, len(members))), (name, dumps(draw(json_values), True)))
        if name == "extra":
            members.append((name, dumps(draw(json_values), True)))
        return obj(members, draw(spacing)), kind
    if kind == "deep":
        depth = draw(st.sampled_from([100, 900, 990, 1000, 1010, 2000, 20000]))
        where = draw(st.sampled_from(["payload", "extra", "top", "id"]))
        if where == "top":
            return nested(depth), f"deep:{where}"
        doc = dumps(_event(draw), True)[:-1]
        inner = nested(depth) if where != "payload" else b'{"x":' + nested(depth) + b"}"
        name = {"id": "customer_id", "extra": "extra", "payload": "payload"}[where]
        return doc + f',"{name}":'.encode() + inner + b"}", f"deep:{where}"
    if kind == "type":
        return dumps(draw(json_values), ascii_only), kind
    # members the output sets itself, with values kept raw around them
    members = [(k, dumps(v, True)) for k, v in _event(draw).items()]
    members.insert(
        draw(st.integers(0, len(members))), (draw(st.sampled_from(["customer", "enriched_at"])), draw(raw_numbers))
    )
    return obj(members, draw(spacing)), kind


@st.composite
def hostile_headers(draw: st.DrawFn) -> list[tuple[bytes, bytes | None]]:
    names = (
        st.binary(max_size=24)
        | st.sampled_from(RESERVED)
        | st.sampled_from(
            [b"\xff", b"a\x00b", b"\x00", b"\xc3", b"\xed\xa0\x80", b"\\x41", b"\\", b"", "é".encode(), b"trace-id"]
        )
    )
    values = st.none() | st.binary(max_size=40)
    headers = draw(st.lists(st.tuples(names, values), max_size=6))
    if draw(st.integers(0, 9)) == 0:  # a large header: the record near the input topic's limit
        size = draw(st.sampled_from([20_000, 60_000, 64_000]))
        headers.append((draw(names), draw(st.randoms(use_true_random=False)).randbytes(size)))
    if draw(st.integers(0, 19)) == 0:  # many invalid names: escaping makes them 4x larger
        rnd = draw(st.randoms(use_true_random=False))
        headers += [(bytes([0xFF]) + rnd.randbytes(500), None) for _ in range(100)]
    return headers


@st.composite
def hostile_record(draw: st.DrawFn) -> Hostile:
    value, kind = draw(hostile_value())
    headers = draw(hostile_headers()) if draw(st.booleans()) else []
    key = draw(st.none() | st.binary(max_size=40) | st.sampled_from([b"", b"\x00", b"\xff" * 100]))
    while headers and _size(key, value, headers) > INPUT_MAX - 512:  # what the input topic accepts
        headers.pop(max(range(len(headers)), key=lambda i: len(headers[i][0]) + len(headers[i][1] or b"")))
    return Hostile(key, value, headers, kind=kind)


def _size(key: bytes | None, value: bytes | None, headers: list[tuple[bytes, bytes | None]]) -> int:
    return record_size(key, value, [(n.decode("latin-1"), v) for n, v in headers]) + sum(len(n) for n, _ in headers)


@st.composite
def batches(draw: st.DrawFn, size: int = 20) -> list[Hostile]:
    """Hostile records, each followed by a valid one."""
    out: list[Hostile] = []
    for _ in range(draw(st.integers(1, size))):
        out.append(draw(hostile_record()))
        out.append(draw(valid_record()))
    return out


# --- the checks


@dataclass
class Report:
    records: int = 0
    enriched: int = 0
    codes: Counter[str] | None = None
    kinds: Counter[str] | None = None

    def line(self) -> str:
        codes = dict(sorted((self.codes or {}).items()))
        return (
            f"{self.records} records: {self.enriched} enriched, failed by code {codes}"
            f"; generated kinds {dict(sorted((self.kinds or {}).items()))}"
        )


def check(produced: list[tuple[Hostile, tuple[int, int]]], outcome: Any, customers: dict[str, Any]) -> Report:
    """Every record routed exactly once, a dead letter byte for byte, a readable history row
    whose status agrees, valid records enriched with their customer. Raises AssertionError
    naming the record."""
    from tests.integration.outcome import readable

    assert not outcome.duplicates, f"duplicates: {dict(outcome.duplicates)}"
    report = Report(codes=Counter(), kinds=Counter())
    for record, at in produced:
        report.records += 1
        report.kinds[record.kind] += 1
        where = f"{record.kind} record at {at}: {record!r}"[:2000]
        out = outcome.routed(at)
        assert out is not None, f"lost: {where}"
        row = outcome.history.get(at)
        assert row is not None, f"no history row: {where}"
        assert readable(row), f"history row does not read back: {where}"
        expected = record.expected_code()
        if at in outcome.enriched:
            report.enriched += 1
            assert expected in (None, "enriched"), f"enriched, expected {expected}: {where}"
            assert (row.status, row.error_code) == ("enriched", None), where
            _check_enriched(record, out, customers, where)
            continue
        code = out.header("error.code")
        report.codes[code] += 1
        assert code != "internal_error", f"input reached internal_error: {out.header('error.message')}: {where}"
        assert expected in (None, code), f"got {code}, expected {expected}: {where}"
        assert out.value == record.value and out.key == record.key, f"dead letter not byte for byte: {where}"
        assert (row.status, row.error_code) == ("failed", code), where
    return report


@contextlib.contextmanager
def _deep_stack() -> Iterator[None]:
    """The checks parse documents as deep as the pipeline accepted, from a deeper stack."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def _check_enriched(record: Hostile, out: Any, customers: dict[str, Any], where: str) -> None:
    with _deep_stack():
        _check_enriched_deep(record, out, customers, where)


def _check_enriched_deep(record: Hostile, out: Any, customers: dict[str, Any], where: str) -> None:
    assert record.value is not None
    doc = json.loads(out.value)
    customer = customers[doc["customer_id"]]
    assert doc["customer"] == {
        "name": customer.name,
        "segment": customer.segment,
        "country": customer.country,
        "status": customer.status,
    }, where
    spans = member_spans(record.value, raw_members(record.value))
    for name, start, end in spans:  # every input member's text, byte for byte
        if name not in ("customer", "enriched_at"):
            assert record.value[start:end] in out.value, f"member {name} changed: {where}"
    assert out.key == (record.key if record.key is not None else doc["customer_id"].encode()), where
