"""flows.runtime.bytewax.flow: the whole topology in memory (TestingSource -> steps ->
TestingSink), built from the composition root with a fake lookup."""

import json

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.app import compose
from flows.core.enrich import Enricher
from flows.core.model import Customer, Outcome, SourceRecord
from flows.runtime.bytewax.flow import build_flow
from flows.settings import Settings

from .fakes import ALICE, GOOD, MemoryLookup, record

SETTINGS = Settings.from_env(
    {"INPUT_TOPIC": "events", "OUTPUT_TOPIC": "out", "FAILURE_TOPIC": "dlq", "MAX_VALUE_BYTES": "2000"}
)


def run(records: list[SourceRecord], customers: dict[str, Customer] | None = None):
    delivered: list[Outcome] = []
    lookup = MemoryLookup(customers if customers is not None else {"C1": ALICE})
    app = compose.build(SETTINGS, registry=None)

    def enricher() -> Enricher:
        return Enricher([compose.customers(SETTINGS, lookup)], SETTINGS.output_topic, SETTINGS.failure_topic)

    flow = build_flow(app, TestingSource(records, batch_size=4), TestingSink(delivered), enricher)
    run_main(flow)
    assert app.metrics.records_in == 0 and app.metrics.enriched == sum(1 for r in delivered if r.ok)
    ok = [r for r in delivered if r.ok]
    bad = [r for r in delivered if not r.ok]
    return ok, bad, delivered, lookup


def with_(**changes) -> bytes:
    doc = json.loads(GOOD)
    doc.update(changes)
    return json.dumps(doc).encode()


CASES = [
    (GOOD, None),
    (None, "empty_value"),
    (b"", "empty_value"),
    (b"{" + b" " * 2000 + b"}", "payload_too_large"),
    (b"not json", "invalid_json"),
    (b'{"a": "\xff"}', "invalid_json"),
    (with_(occurred_at="2024-01-01"), "schema_violation"),
    (with_(customer_id="NOPE"), "customer_not_found"),
    (with_(customer_id="' OR 1=1 --"), "customer_not_found"),
]


def test_every_failure_code_and_exactly_one_output_per_record() -> None:
    records = [record(v, offset=i, headers=[("trace", str(i).encode())]) for i, (v, _) in enumerate(CASES)]
    ok, bad, history, _ = run(records)
    assert len(ok) + len(bad) == len(records) == len(history)
    assert [r.message.value for r in ok] and json.loads(ok[0].message.value)["customer"]["name"] == "Alice"
    by_offset = {int(dict(r.message.headers)["source.offset"]): r for r in ok + bad}
    for i, (value, code) in enumerate(CASES):
        r = by_offset[i]
        headers = dict(r.message.headers)
        assert headers["trace"] == str(i).encode()
        if code is None:
            assert r.ok and r.message.topic == "out"
        else:
            assert headers["error.code"] == code.encode(), (i, headers)
            assert r.message.value == value and r.message.topic == "dlq"
    assert sorted(h.history.source_offset for h in history) == list(range(len(CASES)))


def test_unknown_fields_pass_through_and_key_defaults() -> None:
    value = with_(extra={"deep": [1, {"x": None}]}, flag=True)
    ok, bad, _, _ = run([record(value, key=None)])
    assert not bad
    doc = json.loads(ok[0].message.value)
    assert doc["extra"] == {"deep": [1, {"x": None}]} and doc["flag"] is True
    assert ok[0].message.key == b"C1"


def test_internal_error_does_not_stop_the_flow() -> None:
    broken = Customer("C2", object(), "s", "c", "a")  # type: ignore[arg-type]
    records = [record(GOOD, offset=0), record(with_(customer_id="C2"), offset=1), record(GOOD, offset=2)]
    ok, bad, history, _ = run(records, {"C1": ALICE, "C2": broken})
    assert [r.history.source_offset for r in ok] == [0, 2]
    assert [dict(r.message.headers)["error.code"] for r in bad] == [b"internal_error"]
    assert len(history) == 3


def test_lookups_are_batched() -> None:
    records = [record(GOOD, offset=i) for i in range(8)]
    _, _, _, lookup = run(records)
    assert lookup.calls == [["C1"]]


def test_each_worker_outputs_only_what_it_read_on_the_thread_that_read_it() -> None:
    """What exactly-once mode relies on (checked, not assumed): with several workers, the
    topology moves no record between workers, and a worker's source and sink run on one
    thread, so a rebalance callback (run while the source reads) never interleaves with a
    write of the same worker."""
    import threading

    from bytewax.inputs import DynamicSource, StatelessSourcePartition
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import cluster_main

    read_on: dict[int, set[int]] = {}
    written: list[tuple[int, int, SourceRecord]] = []  # (sink worker, thread, record)
    lock = threading.Lock()

    class Part(StatelessSourcePartition[SourceRecord]):
        def __init__(self, worker: int) -> None:
            self.worker, self.left = worker, 5

        def next_batch(self) -> list[SourceRecord]:
            if not self.left:
                raise StopIteration
            self.left -= 1
            with lock:
                read_on.setdefault(self.worker, set()).add(threading.get_ident())
            return [record(GOOD, partition=self.worker, offset=self.left * 10 + i) for i in range(10)]

    class Source(DynamicSource[SourceRecord]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Part:
            return Part(worker_index)

    class SinkPart(StatelessSinkPartition[Outcome]):
        def __init__(self, worker: int) -> None:
            self.worker = worker

        def write_batch(self, items: list[Outcome]) -> None:
            with lock:
                written.extend((self.worker, threading.get_ident(), r.record) for r in items)

    class Sink(DynamicSink[Outcome]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> SinkPart:
            return SinkPart(worker_index)

    app = compose.build(SETTINGS, registry=None)
    lookup = MemoryLookup({"C1": ALICE})

    def enricher() -> Enricher:
        return Enricher([compose.customers(SETTINGS, lookup)], SETTINGS.output_topic, SETTINGS.failure_topic)

    cluster_main(build_flow(app, Source(), Sink(), enricher), [], 0, worker_count_per_proc=3)
    assert len(written) == 3 * 5 * 10
    for worker, thread, rec in written:
        assert rec.partition == worker, "a record reached another worker's sink"
        assert read_on[worker] == {thread}, "a worker's sink ran on another thread than its source"


def test_a_fixed_partition_and_the_sink_it_feeds_are_built_and_run_on_one_thread() -> None:
    """What at-least-once snapshots rely on (flows/runtime/bytewax/source.py, checked, not
    assumed): Bytewax builds a worker's sink and each of its FixedPartitionedSource parts,
    and calls their next_batch, snapshot and write_batch, on the worker's thread, so a part
    finds the Delivery of its worker from the thread."""
    import threading

    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import cluster_main

    lock = threading.Lock()
    part_threads: dict[str, set[int]] = {}
    sink_built_on: dict[int, int] = {}  # thread -> worker whose sink was built on it
    written: list[tuple[int, int, str]] = []  # (sink worker, thread, part of the item)

    def saw(name: str) -> None:
        with lock:
            part_threads.setdefault(name, set()).add(threading.get_ident())

    class Part(StatefulSourcePartition[str, None]):
        def __init__(self, name: str) -> None:
            self.name, self.left = name, 4
            saw(name)

        def next_batch(self) -> list[str]:
            saw(self.name)
            if not self.left:
                raise StopIteration
            self.left -= 1
            return [self.name]

        def snapshot(self) -> None:
            saw(self.name)

        def close(self) -> None:
            saw(self.name)

    class Source(FixedPartitionedSource[str, None]):
        def list_parts(self) -> list[str]:
            return [f"p{i}" for i in range(7)]

        def build_part(self, step_id: str, for_part: str, resume_state: None) -> Part:
            return Part(for_part)

    class SinkPart(StatelessSinkPartition[str]):
        def __init__(self, worker: int) -> None:
            self.worker = worker

        def write_batch(self, items: list[str]) -> None:
            with lock:
                written.extend((self.worker, threading.get_ident(), name) for name in items)

    class Sink(DynamicSink[str]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> SinkPart:
            with lock:
                sink_built_on[threading.get_ident()] = worker_index
            return SinkPart(worker_index)

    flow = Dataflow("threads")
    op.output("out", op.input("in", flow, Source()), Sink())
    cluster_main(flow, [], 0, worker_count_per_proc=3)
    assert len(written) == 7 * 4 and len(sink_built_on) == 3
    assert all(len(threads) == 1 for threads in part_threads.values()), "a part was used from two threads"
    for worker, thread, name in written:
        assert sink_built_on[thread] == worker, "a sink wrote on another thread than its worker's"
        assert part_threads[name] == {thread}, "an item reached a sink on another thread than its part's"


def test_a_workers_input_partitions_are_built_and_polled_on_its_own_thread() -> None:
    """What one consumer per worker relies on (flows/adapters/kafka/source.py, checked, not
    assumed): Bytewax builds, polls and closes each partition of a FixedPartitionedSource on
    the thread of the worker that owns it, so a worker's partitions can share a consumer."""
    import threading

    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
    from bytewax.testing import cluster_main

    calls: list[tuple[str, int]] = []

    class Part(StatefulSourcePartition[int, None]):
        def __init__(self, name: str) -> None:
            self.name, self.left = name, 3
            calls.append((name, threading.get_ident()))

        def next_batch(self) -> list[int]:
            calls.append((self.name, threading.get_ident()))
            if not self.left:
                raise StopIteration
            self.left -= 1
            return [1]

        def snapshot(self) -> None:
            return None

        def close(self) -> None:
            calls.append((self.name, threading.get_ident()))

    class Source(FixedPartitionedSource[int, None]):
        def list_parts(self) -> list[str]:
            return [f"p{i}" for i in range(6)]

        def build_part(self, step_id: str, for_part: str, resume_state: None) -> Part:
            return Part(for_part)

    flow = Dataflow("threads")
    op.output("out", op.input("in", flow, Source()), TestingSink([]))
    cluster_main(flow, [], 0, worker_count_per_proc=3)
    threads_of: dict[str, set[int]] = {}
    for name, thread in calls:
        threads_of.setdefault(name, set()).add(thread)
    assert len(threads_of) == 6 and all(len(t) == 1 for t in threads_of.values())
    assert len({t for ts in threads_of.values() for t in ts}) == 3


def test_per_worker_builds_one_instance_per_worker_thread_however_many_batches() -> None:
    """Bytewax's worker threads are not Python's: a `threading.local` set in a step is gone
    at the next batch (1,000 batches made 1,000 enrichers, each with its own connection pool
    and a cold cache). `PerWorker` keeps one per worker thread for the whole run."""
    import threading

    from bytewax.testing import cluster_main

    from flows.runtime.bytewax.flow import PerWorker

    built: list[int] = []
    closed: list[object] = []

    def build() -> object:
        built.append(threading.get_ident())
        return object()

    per_worker = PerWorker(build, closed.append)
    used: set[tuple[int, int]] = set()

    def step(x: int) -> int:
        used.add((threading.get_ident(), id(per_worker.get())))
        return x

    flow = Dataflow("per_worker")
    stream = op.input("in", flow, TestingSource(list(range(1000)), batch_size=1))
    op.output("out", op.map("m", op.redistribute("spread", stream), step), TestingSink([]))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert len(built) == len(set(built)) == 2, f"{len(built)} instances built for 2 workers"
    assert len(used) == 2, "each worker used its own instance, always the same"
    per_worker.close_all()
    assert len(closed) == 2
