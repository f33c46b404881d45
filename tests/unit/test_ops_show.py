"""What `ops trace` prints of hostile records: nothing invisible reaches the terminal, a
record can't start a line of the report, and the escapes tell the original bytes."""

from __future__ import annotations

import datetime as dt
import io
import re
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from flows.core.model import SourceRecord as Record
from ops import show
from ops.trace import print_message, print_row

# every character the display must never print raw
INVISIBLE = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
HOSTILE = (
    "\x1b[2J\x1b[H"  # clear the screen, cursor home
    "\x1b]0;owned\x07"  # set the window title
    "\r\nhistory row 9 of 9: forged -> enriched\r\n"  # a forged report line
    "\u202eevil\u202c \u2066iso\u2069 \u2028sep\u2029 \x85nel \x00nul \x7fdel \x9bcsi \\back"
)


def _raw_controls(text: str) -> list[str]:
    """Characters that are not plainly visible, except the report's own newlines."""
    return [
        c for c in text if c != "\n" and (ord(c) in INVISIBLE or unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs"))
    ]


def unescape(text: str) -> bytes:
    """The bytes a displayed value stands for (the inverse of show.data)."""
    out = bytearray()
    pattern = r"\\\\|\\n|\\r|\\t|\\x([0-9a-f]{2})|\\u([0-9a-f]{4})|[^\\]"
    for m in re.finditer(pattern, text, re.S):
        tok = m.group(0)
        if tok in ("\\\\", "\\n", "\\r", "\\t"):
            out += {"\\\\": b"\\", "\\n": b"\n", "\\r": b"\r", "\\t": b"\t"}[tok]
        elif m.group(1):
            out.append(int(m.group(1), 16))  # a control below 0x80, or a byte that is not UTF-8
        else:
            out += chr(int(m.group(2), 16) if m.group(2) else ord(tok)).encode()
    return bytes(out)


def test_every_invisible_character_is_shown_as_an_escape() -> None:
    shown = show.text("".join(map(chr, INVISIBLE)))
    assert _raw_controls(shown) == []
    assert show.text("a\nb\rc\td\x1be\x7f") == "a\\nb\\rc\\td\\x1be\\x7f"
    assert show.text("\x85 \u2028 \u202e \u2069") == "\\u0085 \\u2028 \\u202e \\u2069"
    assert show.text("back\\slash") == "back\\\\slash"
    assert show.text("naïve 日本 🙂") == "naïve 日本 🙂"  # printable text stays as it is


def test_bytes_that_are_not_utf8_are_hex_and_unambiguous() -> None:
    assert show.data(b"ok\xff\xfe") == "ok\\xff\\xfe"
    # the byte 0x85 and the character U+0085 (UTF-8 c2 85) are told apart
    assert show.data(b"\x85") == "\\x85" and show.data("\x85".encode()) == "\\u0085"
    # a backslash followed by "xff" is not the byte 0xff
    assert show.data(b"\\xff") == "\\\\xff"


@given(st.binary(max_size=64))
def test_any_bytes_print_safely_and_can_be_told_back(raw: bytes) -> None:
    shown = show.data(raw)
    assert _raw_controls(shown) == []
    assert unescape(shown) == raw


@given(st.text(max_size=64))
def test_any_text_prints_safely_and_can_be_told_back(value: str) -> None:
    shown = show.text(value)
    assert _raw_controls(shown) == []
    shown.encode("utf-8")  # printable: no lone surrogate left
    assert unescape(shown) == value.encode("utf-8", "surrogatepass")


def test_a_cut_never_splits_an_escape() -> None:
    raw = b"\x1b" * 10 + b"\xff" * 10
    assert show.preview(raw, 12) == "\\x1b" * 10 + "\\xff\\xff… (20 bytes; --full shows all)"
    assert show.preview(raw, None) == "\\x1b" * 10 + "\\xff" * 10
    assert show.text_preview("é" * 30, 3) == "ééé… (30 characters; --full shows all)"


def test_header_names_escaped_by_the_reader_keep_their_escapes() -> None:
    # flows.kafka_headers gives b"bad\xff\x1b" as "bad\\xff" + ESC: the byte escape stays, ESC is escaped
    assert show.header_name("bad\\xff\x1b", escaped_by_reader=True) == "bad\\xff\\x1b"
    # in a record whose names are all UTF-8, a backslash is a backslash
    assert show.header_name("bad\\xff", escaped_by_reader=False) == "bad\\\\xff"
    assert show.header_name("plain\\name", escaped_by_reader=True) == "plain\\\\name"


def test_trace_prints_a_hostile_output_record_on_its_own_lines() -> None:
    headers: list[tuple[str, bytes | None]] = [
        ("trace-id\r\nhistory row 2 of 2: x -> enriched", HOSTILE.encode()),
        ("bad\\xfe\x1b[31m", b"\r\n    header  error.code: forged"),
        ("null", None),
    ]
    rec = Record(
        "events.failed",
        1,
        7,
        0,
        HOSTILE.encode() + b"\xff",
        b"\x1b[2J" + b"v" * 5000 + b"\r\n",
        headers,
        header_error="1 header name is not UTF-8",
    )
    out = io.StringIO()
    print_message(rec, full=False, out=out)
    text = out.getvalue()
    assert _raw_controls(text) == []
    lines = text.splitlines()
    assert len(lines) == 1 + 1 + len(headers) + 1 + 1  # record, key, headers, the note on names, value
    assert [line.split()[0] for line in lines] == ["output", "key", "header", "header", "header", "(a", "value"]
    assert not any(line.startswith(("history row", "    header  error.code")) for line in lines)
    assert lines[3] == "    header  bad\\xfe\\x1b[31m: \\r\\n    header  error.code: forged"
    assert lines[4] == "    header  null: null"
    assert lines[-1].startswith("    value   \\x1b[2Jvvv") and lines[-1].endswith("(5006 bytes; --full shows all)")
    assert unescape(lines[1].split("key     ", 1)[1]) == HOSTILE.encode() + b"\xff"


def test_trace_prints_hostile_history_columns_escaped() -> None:
    moment = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    row = {
        "event_id": HOSTILE,
        "source_topic": "events",
        "source_partition": 0,
        "source_offset": 3,
        "status": "failed",
        "error_code": "schema_violation",
        "event_type": "\x1b]0;t\x07",
        "customer_id": "c\r\nhistory row 9 of 9",
        "occurred_at": moment,
        "processed_at": moment,
        "output_topic": "events.failed",
        "payload": '{"a":"\u202e' + "x" * 3000 + '"}',
    }
    out = io.StringIO()
    print_row(row, 1, 1, out)
    text = out.getvalue()
    assert _raw_controls(text) == []
    lines = text.splitlines()
    assert len(lines) == 8 and lines[0] == "history row 1 of 1: events:0:3 -> failed (schema_violation)"
    assert [line.split()[0] for line in lines[1:]] == [
        "event_id",
        "event_type",
        "customer_id",
        "occurred_at",
        "processed_at",
        "output_topic",
        "payload",
    ]
    assert lines[3] == "  customer_id   c\\r\\nhistory row 9 of 9"
    assert lines[7].endswith(f"({len(row['payload'])} characters; --full shows all)")
    full = io.StringIO()
    print_row(row, 1, 1, full, full=True)
    assert "x" * 3000 in full.getvalue() and "--full" not in full.getvalue()
