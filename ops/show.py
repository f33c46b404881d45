"""Record data made safe to print on an operator's terminal.

Whatever came from a record (keys, values, header names and values, and the history
columns copied from them) may hold anything a producer sent: an ANSI escape sequence that
clears the screen or retitles the window, a `\\r\\n` that starts a line looking like part of
the report, a bidi override that shows text in another order than it is stored. So every
character that is not plainly visible is printed as an escape:

- C0 controls, DEL and C1 controls: `\\n`, `\\r`, `\\t`, else `\\xNN` (C0, DEL) or `\\u0085` (C1);
- Unicode line and paragraph separators (U+2028, U+2029), the bidi embeddings, overrides
  and isolates (U+202A..U+202E, U+2066..U+2069) and bidi marks (U+061C, U+200E, U+200F):
  `\\uXXXX`;
- a byte that is not part of valid UTF-8: `\\xNN` (only bytes can be invalid, so it can't
  be mistaken for a C1 character, which is shown as `\\u00NN`);
- a backslash: `\\\\`, so that every backslash printed starts an escape and the bytes can
  be told back exactly.
"""

from __future__ import annotations

import re

PREVIEW_CHARS = 1000

_NAMED = {0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
_INVISIBLE = [
    *range(0x00, 0x20),
    *range(0x7F, 0xA0),
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
    0x061C,
    0x200E,
    0x200F,
]


def _escape(cp: int) -> str:
    if cp in _NAMED:
        return _NAMED[cp]
    return f"\\x{cp:02x}" if cp < 0x80 else f"\\u{cp:04x}"


# str.translate tables: one for text (a lone surrogate, which can't be printed at all, as
# \\udXXX) and one for bytes decoded with surrogateescape (U+DC80..U+DCFF stand for the
# invalid bytes 0x80..0xFF)
_TEXT: dict[int, str] = {cp: _escape(cp) for cp in [*_INVISIBLE, 0x5C]}
_TEXT.update({cp: f"\\u{cp:04x}" for cp in range(0xD800, 0xE000)})
_BYTES: dict[int, str] = {**_TEXT, **{0xDC00 + b: f"\\x{b:02x}" for b in range(0x80, 0x100)}}
_CONTROLS_ONLY: dict[int, str] = {cp: s for cp, s in _TEXT.items() if cp != 0x5C}
_ESCAPED_NAME = re.compile(r"(?:[^\\]|\\\\|\\x[0-9a-f]{2})*", re.S)


def text(value: str) -> str:
    """A string from a record (or a history column) as printable text."""
    return value.translate(_TEXT)


def data(raw: bytes) -> str:
    """Bytes from a record as printable text: UTF-8 where they are, `\\xNN` where not."""
    return raw.decode("utf-8", "surrogateescape").translate(_BYTES)


def controls(value: str) -> str:
    """Only the invisible characters escaped, backslashes kept: for text whose backslashes
    are escapes already (a header name the reader escaped)."""
    return value.translate(_CONTROLS_ONLY)


def preview(raw: bytes | None, limit: int | None = PREVIEW_CHARS) -> str:
    """`data`, cut after `limit` characters of the original (not of the escapes, so a cut
    never splits one), with the full size and how to see it all; `null` for no value."""
    if raw is None:
        return "null"
    decoded = raw.decode("utf-8", "surrogateescape")
    if limit is not None and len(decoded) > limit:
        return f"{decoded[:limit].translate(_BYTES)}… ({len(raw)} bytes; --full shows all)"
    return decoded.translate(_BYTES)


def text_preview(value: str, limit: int | None = PREVIEW_CHARS) -> str:
    """`text`, cut after `limit` characters of the original, with the full length and how to see
    it all."""
    if limit is not None and len(value) > limit:
        return f"{text(value[:limit])}… ({len(value)} characters; --full shows all)"
    return text(value)


def header_name(name: str, escaped_by_reader: bool) -> str:
    """A header name as `flows.kafka_headers` returned it. In a record where some name was
    not UTF-8 (`escaped_by_reader`), such names come escaped already (`\\xNN`, `\\\\`): a
    name that reads as such an escape of bytes that are not UTF-8 keeps its backslashes.
    (A valid name spelling out such an escape literally prints the same: this display
    can't tell the two apart, the record's `header_error` can.)"""
    if escaped_by_reader and "\\" in name and _ESCAPED_NAME.fullmatch(name) and not _is_utf8(_unescape(name)):
        return controls(name)
    return text(name)


def _unescape(name: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(name):
        if name.startswith("\\\\", i):
            out += b"\\"
            i += 2
        elif name.startswith("\\x", i):
            out.append(int(name[i + 2 : i + 4], 16))
            i += 4
        else:
            out += name[i].encode("utf-8", "surrogatepass")
            i += 1
    return bytes(out)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
