"""`ops trace`, `ops reconcile` and `ops replay` over hostile records: header names that are
not UTF-8 (produced through librdkafka directly, `tests/rawkafka.py`), control characters
and bidi overrides in keys, values, header names and values, null keys and values, and
values of a megabyte. The dataflow processes the input first (so there are history rows
and outputs to trace); then records no pipeline would write are added to the failure and
output topics, as any producer could.

The tools must finish with a documented status (0 or 1; never 3, never a traceback), and
nothing invisible may reach the operator's terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka.admin import AdminClient

from tests.rawkafka import RawProducer
from tools import provision as flows_admin
from tools import sample

from .flowrun import ROOT, Topics, run_dataflow

ESC = "\x1b[2J\x1b[H\x1b]0;owned\x07"  # clear the screen, cursor home, set the window title
FORGED = "\r\nhistory row 9 of 9: forged -> enriched\r\n"
BIDI = "\u202etxt.exe\u202c \u2066x\u2069 \u2028 \x85"
BIG = 1 << 20  # the default MAX_VALUE_BYTES


def event(event_id: str, customer: str, **extra: object) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "event_type": "login",
            "occurred_at": "2026-01-01T00:00:00Z",
            "customer_id": customer,
            "payload": {"note": ESC + FORGED},
            **extra,
        }
    ).encode()


@dataclass
class Hostile:
    topics: Topics
    env: dict[str, str]
    inputs: list[tuple[int, int]]  # (partition, offset) of every input record
    bad_name_at: tuple[int, int]  # a good event whose only fault is a header name that is not UTF-8
    escaped_id: str  # an event_id full of control characters, enriched


@pytest.fixture(scope="module")
def hostile(admin: AdminClient) -> Iterator[Hostile]:
    topics = Topics(prefix="ithostile", partitions=2).create()
    settings = topics.settings
    flows_admin.seed_customers(settings, sample.customers(3))
    known = sample.customer_id(1)
    escaped_id = f"evt-{topics.input.split('.')[0][-10:]}-{ESC}{FORGED}{BIDI}"  # unique: history rows stay
    assert len(escaped_id) <= 128
    records: list[tuple[bytes | None, bytes | None, list[tuple[bytes, bytes | None]]]] = [
        (b"k1", event("hostile-bad-name", known), [(b"trace-id", b"1"), (b"bad\xff\xfe" + ESC.encode(), b"v")]),
        (
            ESC.encode() + b"\xff",
            event(escaped_id, known),
            [(f"name{FORGED}".encode(), (ESC + FORGED).encode()), (BIDI.encode(), None), (b"nul\x00name", b"\x00\x01")],
        ),
        (None, None, [(b"only\xc3", None)]),
        (None, b"", [(b"\\xff", b"a backslash, not a byte")]),
        (b"big", b"\x1b[31m" + b"x" * (BIG - 100) + b"\r\n\xff", [(b"h", ESC.encode())]),
        (b"huge", b"{" + b" " * BIG, [(b"bad\x80", ESC.encode())]),  # over MAX_VALUE_BYTES
        (BIDI.encode(), event("hostile-nobody", "NOBODY-" + ESC), [(b"r\r\n", b"\r\n")]),
    ]
    big_conf = {"message.max.bytes": str(2 * BIG + 200_000)}
    with RawProducer(settings.kafka_bootstrap_servers, big_conf) as producer:
        for p, (key, value, headers) in enumerate(records):
            producer.produce(topics.input, p % 2, key, value, headers)
        delivered = producer.flush()
    inputs = [(p, o) for _, p, o in delivered]
    env = {**topics.env, "STOP_AT_END": "true"}
    done = run_dataflow(env)
    assert done.returncode == 0, done.stderr[-3000:]

    # what no pipeline writes, but any producer can
    in_topic = topics.input.encode()
    forged_out = [
        (
            b"k",
            b"{}",
            [
                (b"source.topic", in_topic),
                (b"source.partition", b"0"),
                (b"source.offset", b"100000"),
                (b"x\xff" + ESC.encode(), FORGED.encode()),
            ],
        ),
        (None, None, [(b"source.topic", in_topic), (b"source.partition", FORGED.encode()), (b"source.offset", b"-")]),
        (b"\xff", b"\xfe" * 100, [(b"source.topic", b"\xff\xfe"), (b"\xff", None)]),
    ]
    forged_dead = [
        (
            ESC.encode(),
            b"\xff" + ESC.encode(),
            [
                (b"error.code", b"invalid_json"),
                (b"trace\xfe", ESC.encode()),
                (b"source.topic", in_topic),
                (b"source.partition", b"1"),
                (b"source.offset", b"x\r\n"),
            ],
        ),
        (None, None, [(b"error.code", (ESC + FORGED).encode())]),
        (b"k", b"v", [(b"error.code", b"\xff\xfe"), (b"replay.of", FORGED.encode())]),
    ]
    with RawProducer(settings.kafka_bootstrap_servers, big_conf) as producer:
        for key, value, headers in forged_out:
            producer.produce(topics.output, None, key, value, headers)
        for key, value, headers in forged_dead:
            producer.produce(topics.failure, None, key, value, headers)
        producer.flush()
    yield Hostile(topics, topics.env, inputs, inputs[0], escaped_id)
    base = topics.input.split(".")[0]
    extra = [t for t in admin.list_topics(timeout=10).topics if t.startswith(base)]
    for fut in admin.delete_topics(extra, operation_timeout=30).values():
        fut.result(timeout=60)


def ops(world: Hostile, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "ops", *args, "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **world.env},
        errors="surrogateescape",
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert invisible(done.stdout) == [] and invisible(done.stderr) == [], (done.stdout + done.stderr)[:3000]
    return done


def invisible(text: str) -> list[str]:
    """Characters a terminal would act on or hide (the report's own newlines aside)."""
    return [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")]


def test_reconcile_survives_hostile_records(hostile: Hostile) -> None:
    done = ops(hostile, "reconcile")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "missing: none" in done.stdout
    total = next(line for line in done.stdout.splitlines() if line.strip().startswith("total")).split()
    assert int(total[1]) == len(hostile.inputs)
    assert "outputs of other input topics (or without source headers), ignored:" in done.stdout


def test_trace_survives_every_hostile_input_record(hostile: Hostile) -> None:
    for p, o in hostile.inputs:
        done = ops(hostile, "trace", "--source", f"{hostile.topics.input}:{p}:{o}")
        assert done.returncode in (0, 1), done.stdout + done.stderr
        for line in done.stdout.splitlines():  # no record can start a report line
            assert not line.startswith("history row 9 of 9"), line


def test_trace_files_a_record_with_an_invalid_header_name_under_its_coordinates(hostile: Hostile) -> None:
    """As the dataflow does: the record fails as invalid_headers before its event_id is read."""
    p, o = hostile.bad_name_at
    source = f"{hostile.topics.input}:{p}:{o}"
    done = ops(hostile, "trace", "--source", source)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"event_id {source} (its event_id can't be read" in done.stdout
    assert f"{source} -> failed (invalid_headers)" in done.stdout
    # the dead letter carries the name as the dataflow escaped it (text with backslashes,
    # shown doubled), the escape character in it shown as an escape
    assert "    header  bad\\\\xff\\\\xfe\\x1b[2J\\x1b[H\\x1b]0;owned\\x07: v" in done.stdout
    assert "    header  error.code: invalid_headers" in done.stdout


def test_trace_by_an_event_id_full_of_control_characters(hostile: Hostile) -> None:
    done = ops(hostile, "trace", hostile.escaped_id)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "-> enriched" in done.stdout
    assert "history row 1 of 1:" in done.stdout
    shown = next(line for line in done.stdout.splitlines() if line.startswith("  event_id "))
    assert shown.endswith(
        "-\\x1b[2J\\x1b[H\\x1b]0;owned\\x07\\r\\nhistory row 9 of 9: forged -> enriched\\r\\n"
        "\\u202etxt.exe\\u202c \\u2066x\\u2069 \\u2028 \\u0085"
    )
    assert "    header  name\\r\\nhistory row 9 of 9: forged -> enriched\\r\\n: \\x1b[2J" in done.stdout
    # (the name is cut at its NUL byte on the way out: confluent-kafka's producer takes C strings)
    lines = done.stdout.splitlines()
    assert any(line.startswith("    header  nul") and line.endswith(": \\x00\\x01") for line in lines)


def test_replay_survives_hostile_dead_letters(hostile: Hostile) -> None:
    dry = ops(hostile, "replay", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    target = f"{hostile.topics.input}.replayed"
    flows_admin.ensure_topics(hostile.topics.settings, [target], 2)
    done = ops(hostile, "replay", "--to", target)
    assert done.returncode == 0, done.stdout + done.stderr
    would = next(line for line in dry.stdout.splitlines() if line.startswith("dry run: would replay"))
    assert f"replayed {would.split()[4]} records" in done.stdout
    assert "  \\x1b[2J\\x1b[H\\x1b]0;owned\\x07\\r\\nhistory row 9 of 9" in done.stdout  # a hostile error.code
