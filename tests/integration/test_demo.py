"""`make demo`, the newcomer's first command, run as the README says, on the local stack:
it exits 0, its summary adds up (every record in one of the topics and in the history
table) and shows every failure code; with FORMAT=avro the events go in and come out through
the Schema Registry. Pointed at a remote server it refuses, exit 2."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from .flowrun import ROOT

CODES = ("customer_not_found", "empty_value", "payload_too_large")


def make_demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "demo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def summary_count(stdout: str, label: str) -> int:
    found = re.search(rf"^{label}\s+\S+\s+(\d+) (records|rows)", stdout, re.M)
    assert found, stdout
    return int(found.group(1))


@pytest.mark.parametrize(("fmt", "unreadable"), [("", "invalid_json"), ("avro", "invalid_format")])
def test_make_demo_accounts_for_every_record(fmt: str, unreadable: str) -> None:
    done = make_demo(*([f"FORMAT={fmt}"] if fmt else []))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "accounting: every record accounted for" in out, out
    n = summary_count(out, "input")
    assert n == 5000
    assert summary_count(out, "enriched") + summary_count(out, "failed") == n
    assert summary_count(out, "history") == n
    for code in (*CODES, unreadable):
        assert re.search(rf"^\s+{code}\s+\d+$", out, re.M), (code, out)
    if fmt:
        assert f"events written in {fmt}" in out and f"({fmt}, " in out, out


def test_make_demo_refuses_a_remote_server() -> None:
    done = make_demo(env={"KAFKA_BOOTSTRAP_SERVERS": "kafka.example.com:9092"})
    assert done.returncode != 0
    assert "kafka.example.com" in done.stdout + done.stderr and "ALLOW_REMOTE=1" in done.stdout + done.stderr
