"""flows.app.compose: any bytes as value, any key and headers make exactly one outcome, never an exception."""

from hypothesis import given, settings
from hypothesis import strategies as st

from flows.app.compose import decode_batch
from flows.core.cache import TtlCache
from flows.core.decode import decode_record
from flows.core.enrich import Enricher
from flows.core.model import SourceRecord

from .fakes import ALICE, MemoryLookup
from .test_enrich import resolver

json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
values = st.one_of(
    st.none(),
    st.binary(max_size=300),
    json_like.map(lambda v: __import__("json").dumps(v).encode()),
    st.fixed_dictionaries(
        {
            "event_id": st.text(max_size=130),
            "event_type": st.text(max_size=3),
            "occurred_at": st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01", "x", ""]),
            "customer_id": st.sampled_from(["C1", "", "' OR 1=1 --", "C2"]),
        },
        optional={"payload": json_like},
    ).map(lambda d: __import__("json").dumps(d).encode()),
)
headers = st.lists(st.tuples(st.text(max_size=12), st.binary(max_size=12)), max_size=4)


@settings(max_examples=400, deadline=None)
@given(value=values, key=st.none() | st.binary(max_size=20), hdrs=headers, offset=st.integers(0, 2**40))
def test_any_record_routes_to_exactly_one_result(value, key, hdrs, offset) -> None:
    rec = SourceRecord("events", 0, offset, 0, key, value, hdrs)
    decode_record(rec, 200)  # never raises on its own
    enricher = Enricher([resolver(MemoryLookup({"C1": ALICE}), TtlCache(60, 5, 10))], "out", "dlq")
    results = enricher.process(decode_batch([rec], 200))
    assert len(results) == 1
    r = results[0]
    assert r.message.topic == ("out" if r.ok else "dlq")
    assert r.history.source_offset == offset
    if not r.ok:
        assert r.message.value == value and r.message.key == key
        assert r.history.error_code != "internal_error"
