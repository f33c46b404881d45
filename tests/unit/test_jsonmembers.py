"""flows.jsonmembers: duplicate names and member spans, checked against a reference reader."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from flows.core.jsonmembers import duplicate_name, member_path, member_spans, raw_members

names = st.text(min_size=0, max_size=6)
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3), max_leaves=6
)
spacing = st.sampled_from(["", " ", "\n  ", "\t"])


@st.composite
def objects(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, object]]]:
    """A JSON object text with possible duplicate names, odd spacing and escaped names."""
    members = draw(st.lists(st.tuples(names, values), max_size=6))
    if members and draw(st.booleans()):
        members.append((draw(st.sampled_from([n for n, _ in members])), draw(values)))  # a duplicate
    ws = draw(spacing)
    parts = []
    for name, value in members:
        quoted = json.dumps(name, ensure_ascii=draw(st.booleans()))
        parts.append(f"{ws}{quoted}{ws}:{ws}{json.dumps(value)}{ws}")
    return ("{" + ",".join(parts) + "}").encode(), members


@settings(max_examples=500, deadline=None)
@given(objects())
def test_duplicates_and_spans_agree_with_a_pairs_reader(obj: tuple[bytes, list[tuple[str, object]]]) -> None:
    text, members = obj
    pairs = json.loads(text, object_pairs_hook=lambda p: p)
    seen: set[str] = set()
    expected = None
    for name, _ in pairs:
        if name in seen:
            expected = name
            break
        seen.add(name)
    raws = raw_members(text)
    found = duplicate_name(text, raws)
    assert (found is None) == (expected is None)
    if expected is None:
        spans = member_spans(text, raws)
        assert [n for n, _, _ in spans] == [n for n, _ in pairs]
        whole = json.loads(text)
        for name, start, end in spans:
            assert json.loads(b"{" + text[start:end] + b"}") == {name: whole[name]}


def test_paths_of_odd_names() -> None:
    assert member_path("customer_id") == "$.customer_id"
    assert member_path("a b") == '$["a b"]'
    assert member_path('q"') == '$["q\\""]'
    long = member_path("x" * 5000)
    assert len(long) < 300 and long.endswith('…"]')
