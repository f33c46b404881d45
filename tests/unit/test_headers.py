"""flows.core.headers: names that are not UTF-8 escaped so the original bytes can be told
(reading real messages is tested on the broker: tests/integration/test_hostile.py)."""

import codecs
import re

from hypothesis import given
from hypothesis import strategies as st

from flows.core.headers import escape_name, from_pairs


def unescape(text: str) -> bytes:
    out = bytearray()
    for m in re.finditer(r"\\\\|\\x([0-9a-f]{2})|[^\\]+", text, re.S):
        if m.group(0) == "\\\\":
            out += b"\\"
        elif m.group(1):
            out.append(int(m.group(1), 16))
        else:
            out += m.group(0).encode()
    return bytes(out)


@given(st.binary(max_size=40))
def test_an_escaped_name_tells_the_original_bytes(raw: bytes) -> None:
    [(text, _)], _ = from_pairs([(raw, None)])
    text.encode("utf-8")  # always writable as a header name
    assert "\x00" not in text
    if text == raw.decode("utf-8", "replace") and b"\x00" not in raw:
        return  # UTF-8 without NUL: as it came
    assert unescape(text) == raw


def test_escaping() -> None:
    assert escape_name(b"plain") == "plain"
    assert escape_name(b"a\xff\\b") == "a\\xff\\\\b"
    assert escape_name(b"\xff\x00") == "\\xff\\x00"  # no NUL is ever written: clients cut names there
    assert escape_name(codecs.encode("é", "utf-8") + b"\xc3") == "é\\xc3"


def test_from_pairs_marks_a_record_with_an_invalid_name() -> None:
    headers, error = from_pairs([(b"ok", b"1"), (b"x\xfe", None), (b"\xff", b"")])
    assert headers == [("ok", b"1"), ("x\\xfe", None), ("\\xff", b"")]
    assert error is not None and error.startswith("2 header names are not UTF-8")
    assert from_pairs([(b"a", b"1")]) == ([("a", b"1")], None)


def test_a_valid_name_with_nul_is_kept_escaped_so_it_cant_become_another_name() -> None:
    headers, error = from_pairs([(b"source.topic\x00forged", b"1"), (b"a\\b\x00", None)])
    assert error is None, "NUL is UTF-8: the record is valid"
    assert headers == [("source.topic\\x00forged", b"1"), ("a\\\\b\\x00", None)]
