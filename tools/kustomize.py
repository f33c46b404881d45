"""The pinned `kustomize` binary, built once with `go install` from the Go module proxy into
a cache outside the clone (`~/.cache/enrichment-tools`, or `ENRICHMENT_TOOLS_DIR`).

`python -m tools.kustomize build k8s/overlays/example` renders the manifests (what
`kubectl apply -k` applies); the tests render with it too. Needs Go (1.22+) on the PATH
the first time; the build takes about a minute.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools import gobin

VERSION = "v5.7.1"
MODULE = "sigs.k8s.io/kustomize/kustomize/v5"


def binary() -> Path:
    """Where the pinned kustomize is (or will be) cached."""
    return gobin.binary("kustomize", VERSION)


def ensure() -> Path:
    """The binary, built first when missing."""
    return gobin.ensure("kustomize", MODULE, VERSION)


def build(directory: Path) -> str:
    """`kustomize build directory`: the rendered manifests as one YAML stream."""
    res = subprocess.run([str(ensure()), "build", str(directory)], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"kustomize build {directory} failed:\n{res.stderr}")
    return res.stdout


if __name__ == "__main__":
    sys.exit(subprocess.call([str(ensure()), *sys.argv[1:]]))
