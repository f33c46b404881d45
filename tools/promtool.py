"""Prometheus's `promtool`, pinned, built once with `go install` (tools/gobin.py; several
minutes the first time). The tests check and unit-test the alert rules with it:
`python -m tools.promtool test rules ...`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools import gobin

# Prometheus 3.x's Go module versions are v0.3xx.y
VERSION = "v0.316.0"
PACKAGE = "github.com/prometheus/prometheus/cmd/promtool"


def ensure() -> Path:
    """The binary, built first when missing."""
    return gobin.ensure("promtool", PACKAGE, VERSION, minutes="several minutes")


if __name__ == "__main__":
    sys.exit(subprocess.call([str(ensure()), *sys.argv[1:]]))
