"""The top-level members of a JSON object, found in its bytes. Pure.

Two things the event decoder can't tell: whether a member name appears twice (msgspec,
like most decoders, keeps the last one, while other readers keep the first, so the same
bytes would mean two different events), and where each member sits in the bytes (the
output keeps every member's text byte for byte, so members are cut out, never re-encoded).

Both start from `raw_members(value)`: the members as `{name: msgspec.Raw}`, where each Raw is
the exact text of the member's (last) value. Call it only on a value that has already been
decoded as a JSON object: everything here relies on the bytes being valid JSON.
"""

from __future__ import annotations

import re

import msgspec
from msgspec import Raw

RawMembers = dict[str, Raw]
_RAW_MEMBERS = msgspec.json.Decoder(RawMembers)
_STRING = msgspec.json.Decoder(str)
_NAME = re.compile(rb'[ \t\r\n]*"([^"\\]*(?:\\.[^"\\]*)*)"[ \t\r\n]*:[ \t\r\n]*', re.S)
_AFTER_VALUE = re.compile(rb"[ \t\r\n]*([,}])")


def raw_members(value: bytes) -> RawMembers:
    """The top-level members of a JSON object: name -> its (last) value's text."""
    return _RAW_MEMBERS.decode(value)


def duplicate_name(value: bytes, members: RawMembers) -> str | None:
    """A member name that appears twice at the top level, or None.

    Fast check first, by counting colons: every top-level member has exactly one colon of
    its own, and every other colon is inside a member's value (counted in its Raw text) or
    inside a name. So when no name holds a colon, the top-level colons number exactly the
    distinct names unless some member was overwritten by a later one of the same name (its
    own colon, and any in its value, are then left over). Only then, or when a name holds a
    colon (it may be escaped as \\u003a in the bytes), is the object walked member by member.
    """
    if ":" in "".join(members):
        return _walk_for_duplicate(value, members)
    # Raw supports the buffer protocol: one join, one count (C speed), for all the values
    inside_values = b"".join(members.values()).count(b":")
    if value.count(b":") - inside_values == len(members):
        return None
    return _walk_for_duplicate(value, members)


def member_spans(value: bytes, members: RawMembers) -> list[tuple[str, int, int]]:
    """(name, start, end) of every top-level member, in order: [start, end) runs from the
    opening quote of its name to the end of its value. The object must have no duplicate
    names (`duplicate_name` is None)."""
    spans: list[tuple[str, int, int]] = []
    for name, start, end in _members(value, members):
        if end < 0:
            raise ValueError(f"member {name!r} appears twice")
        spans.append((name, start, end))
    return spans


def _walk_for_duplicate(value: bytes, members: RawMembers) -> str | None:
    seen: set[str] = set()
    for name, _, end in _members(value, members):
        if end < 0 or name in seen:
            return name
        seen.add(name)
    return None


def _members(value: bytes, members: RawMembers) -> list[tuple[str, int, int]]:
    """Walk the members. A member's value is skipped by its Raw text: the Raw of a name is
    the text of its last occurrence, so where that text is not what follows the name (or is
    followed by something other than `,` or `}`), this occurrence is not the last one: the
    name repeats, reported as `end == -1`. (JSON values end at a closing quote or bracket,
    or at the next delimiter for numbers and literals, so a Raw found at the right place
    and followed by a delimiter is the value there.)"""
    out: list[tuple[str, int, int]] = []
    pos = value.index(b"{") + 1
    if not members:
        return out
    while True:
        match = _NAME.match(value, pos)
        if match is None:  # not reached for valid JSON; stop rather than loop
            raise ValueError(f"no member name at byte {pos}")
        quoted = match.group(1)
        name = quoted.decode() if b"\\" not in quoted else _STRING.decode(b'"' + quoted + b'"')
        start = match.start(1) - 1
        raw = members.get(name)
        begin = match.end()
        if raw is None or not value.startswith(raw, begin):
            out.append((name, start, -1))
            return out
        end = begin + len(raw)
        after = _AFTER_VALUE.match(value, end)
        if after is None:
            out.append((name, start, -1))
            return out
        out.append((name, start, end))
        if after.group(1) == b"}":
            return out
        pos = after.end()


_SIMPLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_PATH_CHARS = 256


def member_path(name: str) -> str:
    """The JSON path of a top-level member: `$.name`, or `$["a name"]` when the name is not
    a plain identifier; a very long name is cut (the path is for people reading a header)."""
    if _SIMPLE_NAME.fullmatch(name) and len(name) <= MAX_PATH_CHARS:
        return f"$.{name}"
    shown = name if len(name) <= MAX_PATH_CHARS else name[:MAX_PATH_CHARS]
    quoted = msgspec.json.encode(shown).decode()
    return f'$[{quoted[:-1]}…"]' if len(name) > MAX_PATH_CHARS else f"$[{quoted}]"
