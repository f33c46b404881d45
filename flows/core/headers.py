"""Header names as text, whatever bytes they arrived as. Pure.

Kafka's protocol calls header names strings, but brokers don't check them. A name that is
not UTF-8 makes its record `invalid_headers`, and it is kept escaped so it can be written
again: every byte that is not part of a valid UTF-8 sequence becomes `\\xNN`, and a
backslash becomes `\\\\`, so the escaped name tells the original bytes exactly. A name
with a NUL character is UTF-8, but Kafka clients write names as C strings, cut at the NUL:
it is escaped the same way (its record stays valid).
"""

from __future__ import annotations

from flows.core.model import Headers


def escape_name(raw: bytes) -> str:
    """A header name as text: UTF-8 as is; otherwise each byte outside a valid UTF-8
    sequence, and NUL, as `\\xNN`, and each backslash doubled."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
        return text.replace("\x00", "\\x00")


def invalid_names_message(count: int) -> str:
    """The `invalid_headers` failure message."""
    return (
        f"{count} header name{'s are' if count != 1 else ' is'} not UTF-8 (Kafka header names are "
        "strings); the dead letter carries such names escaped (\\xNN for each byte that is not UTF-8, "
        "\\\\ for a backslash)"
    )


def escape_nul(name: str) -> str:
    """A UTF-8 name with its NULs as `\\x00` (and backslashes doubled)."""
    return name.replace("\\", "\\\\").replace("\x00", "\\x00")


def from_pairs(pairs: list[tuple[bytes, bytes | None]]) -> tuple[Headers, str | None]:
    """Headers with text names, and the `invalid_headers` message when a name is not UTF-8.

    A name with a NUL character is UTF-8, but Kafka clients take names as C strings and
    would write it cut at the NUL (`source.topic\\0x` as a second `source.topic`): it is
    kept escaped the same way (`\\x00`, backslashes doubled), and its record is valid."""
    headers: Headers = []
    bad = 0
    for name, value in pairs:
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            bad += 1
            text = escape_name(name)
        else:
            if "\x00" in text:
                text = escape_nul(text)
        headers.append((text, value))
    return headers, invalid_names_message(bad) if bad else None
