"""Schema Registry formats on the real stack, its registry included (Apicurio Registry, the
Confluent-compatible API): events written by producers in Avro, Protobuf and JSON Schema
are read with their writers' schemas, enriched, and published as JSON or in a registry
format under the configured subject; bad values are dead-lettered with their original
bytes and the right code; the output's schema is registered at start, a compatible
evolution accepted and an incompatible one refused (exit 2); the registry stopped
mid-stream loses and dead-letters nothing; the Lambda reads the same formats; generated
hostile values in the wire format are each routed once, never `internal_error`."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cassandra.cluster import Session
from confluent_kafka.schema_registry import Schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.adapters.registry.client import registry_client
from flows.adapters.scylla.session import TABLE
from flows.core.model import Customer
from tools import formats, provision, sample
from tools.kafkautil import header, produce_all, read_topic

from .flowrun import ROOT, Topics, run_dataflow, start_dataflow
from .resilience import stack

N_CUSTOMERS = 200
FORMAT_TESTS = int(os.environ.get("FORMAT_HOSTILE_EXAMPLES", "3"))  # each a run over up to 150 values


@pytest.fixture(scope="module")
def seeded(pg_conninfo: str) -> None:
    provision.seed_customers(Topics().settings, sample.customers(N_CUSTOMERS))


def events(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [sample.good_event(rng, i, sample.customer_id(rng.randrange(N_CUSTOMERS))) for i in range(n)]


def bad_values(topics: Topics, fmt: str) -> list[tuple[bytes | None, str]]:
    """Values a producer in `fmt` might send that can't be events, with their codes."""
    client = registry_client(topics.settings)
    good = formats.EventWriter(fmt, topics.settings, topics.input, client).write(events(1, 99)[0])
    # a schema of the topic without customer_id: decodes, fails validation
    partial = {
        "avro": (
            '{"type":"record","name":"Partial","namespace":"shop","fields":[{"name":"event_id","type":"string"},'
            '{"name":"event_type","type":"string"},{"name":"occurred_at","type":"string"}]}'
        ),
    }
    out: list[tuple[bytes | None, str]] = [
        (None, "empty_value"),
        (b"", "empty_value"),
        (b"\x01" + good[1:], "invalid_format"),  # magic byte not 0
        (b'{"event_id": "json, not the wire format"}', "invalid_format"),
        (good[:3], "invalid_format"),  # shorter than the header
        (b"\x00\x7f\xff\xff\x00" + good[5:], "schema_violation"),  # no such schema id
        # bytes that don't decode with the schema (Protobuf's header has its message indexes too)
        (good[: 6 if fmt == "protobuf" else 5] + b"\xff\xff\xff\xff\xff\xff\xff\xff", "schema_violation"),
    ]
    if fmt == "json-schema":
        # framed by a producer that skipped validation: the schema's validator names the field
        out.append((good[:5] + b'{"event_id": 5, "event_type": "t"}', "schema_violation"))
    if fmt == "avro":
        from confluent_kafka.schema_registry.avro import AvroSerializer

        ser = AvroSerializer(client, partial["avro"], conf={"auto.register.schemas": True})
        value = ser({"event_id": "p1", "event_type": "t", "occurred_at": "2026-01-01T00:00:00Z"}, formats_ctx(topics))
        out.append((value, "schema_violation"))
    return out


def formats_ctx(topics: Topics) -> Any:
    from confluent_kafka.serialization import MessageField, SerializationContext

    return SerializationContext(topics.input + "-partial", MessageField.VALUE)


def run_formats(
    fmt_in: str, fmt_out: str, seeded: None, cql: Session, n: int = 300, **env: str
) -> tuple[Topics, list[Any], list[Any], dict[tuple[int, int], Any], Counter[str]]:
    topics = Topics(partitions=2, prefix=f"fmt-{fmt_in}-{fmt_out}").create()
    writer = formats.EventWriter(fmt_in, topics.settings, topics.input)
    docs = events(n, seed=len(fmt_in + fmt_out))
    bad = bad_values(topics, fmt_in)
    records = [
        (d["customer_id"].encode(), writer.write(d), [("trace-id", f"t-{i}".encode())]) for i, d in enumerate(docs)
    ]
    records += [(b"bad", v, [("trace-id", f"bad-{i}".encode())]) for i, (v, _) in enumerate(bad)]
    produce_all(topics.settings, topics.input, records)
    run = run_dataflow({**topics.env, "STOP_AT_END": "true", "INPUT_FORMAT": fmt_in, "OUTPUT_FORMAT": fmt_out, **env})
    assert run.returncode == 0, run.stderr[-3000:]
    enriched = list(read_topic(topics.settings, topics.output))
    failed = list(read_topic(topics.settings, topics.failure))
    inputs = {(m.partition(), m.offset()): m for m in read_topic(topics.settings, topics.input)}
    expected = Counter(code for _, code in bad)
    return topics, enriched, failed, inputs, expected


def coords(m: Any) -> tuple[int, int]:
    return int(header(m, "source.partition") or -1), int(header(m, "source.offset") or -1)


@pytest.mark.parametrize("fmt", ["avro", "protobuf", "json-schema"])
def test_a_format_in_json_out(fmt: str, seeded: None, cql: Session) -> None:
    topics, enriched, failed, inputs, expected = run_formats(fmt, "json", seeded, cql)
    assert len(enriched) == 300
    for m in enriched:
        doc = json.loads(m.value())
        assert doc["customer"]["name"] and doc["enriched_at"].endswith("Z")
        assert doc["occurred_at"].startswith("2026-01-01T")
        assert set(doc["payload"]) >= {"amount", "currency", "items"}
    # dead letters: the original bytes, byte for byte, and the code each calls for
    codes = Counter(header(m, "error.code") for m in failed)
    assert codes == expected, codes
    for m in failed:
        original = inputs[coords(m)]
        assert m.value() == original.value() and m.key() == original.key()
    if fmt == "json-schema":
        named = [m for m in failed if (m.value() or b"").endswith(b'{"event_id": 5, "event_type": "t"}')]
        assert len(named) == 1 and header(named[0], "error.code") == "schema_violation"
        assert header(named[0], "error.field") == "$.event_id", header(named[0], "error.message")
    # the history row's payload is JSON text
    rows = list(
        cql.execute(
            f"SELECT status, payload FROM {topics.keyspace}.{TABLE} WHERE source_topic = %s ALLOW FILTERING",
            (topics.input,),
        )
    )
    assert len(rows) == len(inputs)
    assert all(json.loads(r.payload) is not None for r in rows if r.status == "enriched")


@pytest.mark.parametrize(("fmt_in", "fmt_out"), [("protobuf", "protobuf"), ("json", "avro"), ("avro", "json-schema")])
def test_enriched_events_in_a_registry_format(fmt_in: str, fmt_out: str, seeded: None, cql: Session) -> None:
    if fmt_in == "json":
        topics, enriched = json_in_run(fmt_out)
    else:
        topics, enriched, *_ = run_formats(fmt_in, fmt_out, seeded, cql, n=100)
    out = formats.reader(fmt_out, topics.settings, topics.output)
    assert len(enriched) == 100
    for m in enriched:
        assert m.value()[0] == 0, "the wire format's magic byte"
        doc = json.loads(out.read(m.value()))
        assert doc["event_id"].startswith("evt-") and doc["customer"]["country"]
        assert doc["customer_id"] == m.key().decode()
    subjects = registry_client(topics.settings).get_subjects()
    assert f"{topics.output}-value" in subjects, "registered under the topic name strategy"


def json_in_run(fmt_out: str) -> tuple[Topics, list[Any]]:
    topics = Topics(partitions=2, prefix=f"fmt-json-{fmt_out}").create()
    docs = events(100, seed=5)
    produce_all(topics.settings, topics.input, [(d["customer_id"].encode(), json.dumps(d).encode(), []) for d in docs])
    run = run_dataflow({**topics.env, "STOP_AT_END": "true", "OUTPUT_FORMAT": fmt_out})
    assert run.returncode == 0, run.stderr[-3000:]
    return topics, list(read_topic(topics.settings, topics.output))


def test_subject_strategies_and_schema_evolution(seeded: None) -> None:
    """The output schema under the record strategy's subject; a compatible earlier version
    is evolved from; a schema the registry refuses stops the flow at start, exit 2."""
    topics = Topics(partitions=1, prefix="fmt-subject").create()
    client = registry_client(topics.settings)
    subject = "enrichment.EnrichedEvent"
    ok = run_dataflow({**topics.env, "STOP_AT_END": "true", "OUTPUT_FORMAT": "avro", "SUBJECT_NAME_STRATEGY": "record"})
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert subject in client.get_subjects()

    # topic-record, with an older compatible version already there (without `attributes`):
    # BACKWARD lets the current one in
    topics2 = Topics(partitions=1, prefix="fmt-evolve").create()
    evolving = f"{topics2.output}-enrichment.EnrichedEvent"
    older = json.loads((ROOT / "flows/adapters/registry/schemas/enriched.avsc").read_text())
    older["fields"] = [f for f in older["fields"] if f["name"] != "attributes"]
    client.register_schema(evolving, Schema(json.dumps(older), "AVRO"))
    client.set_compatibility(evolving, "BACKWARD")
    env2 = {**topics2.env, "STOP_AT_END": "true", "OUTPUT_FORMAT": "avro", "SUBJECT_NAME_STRATEGY": "topic-record"}
    evolved = run_dataflow(env2)
    assert evolved.returncode == 0, evolved.stderr[-2000:]
    assert len(client.get_versions(evolving)) == 2

    # an unrelated schema under FULL compatibility: the registry refuses ours, at start
    topics3 = Topics(partitions=1, prefix="fmt-refused").create()
    refusing = f"{topics3.output}-value"
    client.register_schema(
        refusing, Schema('{"type":"record","name":"Other","fields":[{"name":"x","type":"int"}]}', "AVRO")
    )
    client.set_compatibility(refusing, "FULL")
    refused = run_dataflow({**topics3.env, "STOP_AT_END": "true", "OUTPUT_FORMAT": "avro"})
    assert refused.returncode == 2, refused.stderr[-2000:]
    line = [x for x in refused.stderr.splitlines() if "start-up check failed" in x]
    assert line and f"refuses OUTPUT_FORMAT=avro's schema under subject {refusing}" in line[0], refused.stderr[-2000:]


@pytest.mark.outage  # stops the registry: run alone, never beside the other registry tests
def test_the_registry_stopped_mid_stream_loses_and_dead_letters_nothing(
    seeded: None, cql: Session, tmp_path: Path
) -> None:
    topics = Topics(partitions=2, prefix="fmt-outage").create()
    writer = formats.EventWriter("avro", topics.settings, topics.input)
    first = events(200, seed=11)
    produce_all(topics.settings, topics.input, [(None, writer.write(d), []) for d in first])
    log = tmp_path / "dataflow.log"
    proc = start_dataflow(
        {**topics.env, "INPUT_FORMAT": "avro", "OUTPUT_FORMAT": "avro", "RETRY_DEADLINE_SECONDS": "120"}, log
    )
    try:
        deadline = time.monotonic() + 90
        while sum(1 for _ in read_topic(topics.settings, topics.output)) < 200:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        # a second schema version, registered while the registry is up, first seen by the flow while it is down
        v2 = json.loads(formats.AVRO_EVENT)
        v2["fields"].append({"name": "channel", "type": "string", "default": "web"})
        from confluent_kafka.schema_registry.avro import AvroSerializer

        ser = AvroSerializer(writer.client, json.dumps(v2))
        later = [ser({**formats_avro(d), "channel": "app"}, writer.ctx) for d in events(200, seed=12)]
        stack("down", "registry")
        produce_all(topics.settings, topics.input, [(None, v, []) for v in later])
        time.sleep(8)
        assert proc.poll() is None, "the flow rides the outage out"
        assert "schema_registry" in log.read_text() and "retrying" in log.read_text()
        stack("up", "registry")
        deadline = time.monotonic() + 120
        while sum(1 for _ in read_topic(topics.settings, topics.output)) < 400:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
    finally:
        stack("up", "registry")
        proc.terminate()
        proc.wait(60)
    assert not list(read_topic(topics.settings, topics.failure)), "nothing dead-lettered"
    out = formats.reader("avro", topics.settings, topics.output)
    docs = [json.loads(out.read(m.value())) for m in read_topic(topics.settings, topics.output)]
    assert sum(1 for d in docs if d["attributes"].get("channel") == '"app"') == 200, "v2's new field passed through"


def formats_avro(doc: dict[str, Any]) -> dict[str, Any]:
    import datetime as dt

    payload = doc["payload"]
    return {
        **doc,
        "occurred_at": dt.datetime.fromisoformat(doc["occurred_at"].replace("Z", "+00:00")),
        "payload": {
            "amount": float(payload["amount"]),
            "currency": payload["currency"],
            "items": payload["items"],
            "note": None,
        },
    }


@settings(max_examples=FORMAT_TESTS, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    payloads=st.lists(
        st.one_of(st.binary(max_size=64), st.builds(lambda b: b"\x00\x00\x00\x00\x01" + b, st.binary(max_size=64))),
        min_size=50,
        max_size=150,
    )
)
def test_hostile_wire_format_values_are_each_routed_once(payloads: list[bytes], seeded: None) -> None:
    """Generated values, half of them with a valid header and a schema id the registry has,
    then anything: every one routed exactly once, none `internal_error`, exit 0."""
    topics = Topics(partitions=1, prefix="fmt-hostile").create()
    formats.EventWriter("avro", topics.settings, topics.input).write(events(1, 1)[0])  # id 1 exists
    produce_all(topics.settings, topics.input, [(None, p, []) for p in payloads])
    run = run_dataflow({**topics.env, "STOP_AT_END": "true", "INPUT_FORMAT": "avro"}, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    outs = list(read_topic(topics.settings, topics.output)) + list(read_topic(topics.settings, topics.failure))
    assert Counter(coords(m) for m in outs) == Counter({(0, i): 1 for i in range(len(payloads))})
    assert "internal_error" not in {header(m, "error.code") for m in outs}


def test_ops_trace_replay_and_reconcile_in_registry_formats(cql: Session, tmp_path: Path) -> None:
    """Avro in, Protobuf out: `ops trace` shows the values as JSON; the dead letters of a
    customer added later keep their Avro bytes and `ops replay --if-customer-exists` sends
    them back; the dataflow enriches them; `ops reconcile` finds every record."""
    topics = Topics(partitions=2, prefix="fmt-ops").create()
    provision.seed_customers(topics.settings, sample.customers(N_CUSTOMERS))
    late = f"LATE-{uuid.uuid4().hex[:10]}"
    writer = formats.EventWriter("avro", topics.settings, topics.input)
    run = uuid.uuid4().hex[:10]
    good = [{**d, "event_id": f"{run}-{i}"} for i, d in enumerate(events(40, seed=21))]
    parked = [{**d, "customer_id": late, "event_id": f"{run}-late-{i}"} for i, d in enumerate(events(6, seed=22))]
    produce_all(topics.settings, topics.input, [(None, writer.write(d), []) for d in good + parked])
    env = {**topics.env, "INPUT_FORMAT": "avro", "OUTPUT_FORMAT": "protobuf"}
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    flow_args = ("-r", str(recovery), "-s", "1", "-b", "0")

    def ops(*args: str) -> subprocess.CompletedProcess[str]:
        full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        return subprocess.run(
            [sys.executable, "-m", "ops", *args], cwd=tmp_path, capture_output=True, text=True, timeout=180, env=full
        )

    first = run_dataflow({**env, "STOP_AT_END": "true"}, args=flow_args)
    assert first.returncode == 0, first.stderr[-3000:]
    dead = list(read_topic(topics.settings, topics.failure))
    assert {header(m, "error.code") for m in dead} == {"customer_not_found"} and len(dead) == len(parked)
    inputs = {(m.partition(), m.offset()): m.value() for m in read_topic(topics.settings, topics.input)}
    assert all(m.value() == inputs[coords(m)] for m in dead), "dead letters keep the Avro bytes"

    traced = ops("trace", good[0]["event_id"])
    assert traced.returncode == 0, traced.stdout + traced.stderr
    assert "-> enriched" in traced.stdout and "(protobuf)" in traced.stdout
    assert f'"event_id":"{good[0]["event_id"]}"' in traced.stdout.replace(" ", "")
    traced_dead = ops("trace", parked[0]["event_id"])
    assert traced_dead.returncode == 0 and "-> failed (customer_not_found)" in traced_dead.stdout
    assert "(avro)" in traced_dead.stdout, traced_dead.stdout

    waiting = ops("replay", "--if-customer-exists")
    assert waiting.returncode == 0, waiting.stdout + waiting.stderr
    assert "replayed 0 records" in waiting.stdout, waiting.stdout
    provision.seed_customers(topics.settings, [Customer(late, "Late Ltd", "smb", "PL", "active")])
    replayed = ops("replay", "--if-customer-exists")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert f"replayed {len(parked)} records" in replayed.stdout, replayed.stdout

    second = run_dataflow({**env, "STOP_AT_END": "true"}, args=flow_args)
    assert second.returncode == 0, second.stderr[-3000:]
    out = formats.reader("protobuf", topics.settings, topics.output)
    docs = [json.loads(out.read(m.value())) for m in read_topic(topics.settings, topics.output)]
    assert len(docs) == len(good) + len(parked)
    assert {d["event_id"] for d in docs if d["customer"]["name"] == "Late Ltd"} == {d["event_id"] for d in parked}
    reconciled = ops("reconcile")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
