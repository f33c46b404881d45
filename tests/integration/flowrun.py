"""Run the dataflow as users do (`python -m bytewax.run dataflow`) against fresh topics."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from flows.settings import Settings
from tools import provision

from .conftest import unique

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Topics:
    """Fresh input/output/failure topics and the environment that points the dataflow at them."""

    partitions: int = 3
    prefix: str = "it"
    keyspace: str = "enrichment_it"
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        base = unique(self.prefix)
        self.input = f"{base}.events"
        self.output = f"{base}.enriched"
        self.failure = f"{base}.failed"

    @property
    def env(self) -> dict[str, str]:
        return {
            "INPUT_TOPIC": self.input,
            "OUTPUT_TOPIC": self.output,
            "FAILURE_TOPIC": self.failure,
            "SCYLLA_KEYSPACE": self.keyspace,
            "PROGRESS_INTERVAL_SECONDS": "1",
            **self.extra_env,
        }

    @property
    def settings(self) -> Settings:
        return Settings.from_env({**os.environ, **self.env})

    def create(self) -> Topics:
        provision.ensure_topics(self.settings, [self.input, self.output, self.failure], self.partitions)
        return self


def dataflow_cmd(*extra: str) -> list[str]:
    return [sys.executable, "-m", "bytewax.run", "dataflow", *extra]


def run_dataflow(
    env: dict[str, str], timeout: float = 180, args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Run to completion (pass STOP_AT_END=true in `env`); stdout/stderr captured as text."""
    return subprocess.run(
        dataflow_cmd(*args), cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )


def start_dataflow(env: dict[str, str], log: Path, args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """Start in the background, stderr to `log`."""
    out = open(log, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(dataflow_cmd(*args), cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=out)
