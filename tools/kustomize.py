"""The pinned `kustomize` binary, built once with `go install` from the Go module proxy into
a cache outside the clone (`~/.cache/enrichment-tools`, or `ENRICHMENT_TOOLS_DIR`).

`python -m tools.kustomize build k8s/overlays/example` renders the manifests (what
`kubectl apply -k` applies); the tests render with it too. Needs Go (1.22+) on the PATH
the first time; the build takes about a minute.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

VERSION = "v5.7.1"
MODULE = "sigs.k8s.io/kustomize/kustomize/v5"


def binary() -> Path:
    root = Path(os.environ.get("ENRICHMENT_TOOLS_DIR") or Path.home() / ".cache" / "enrichment-tools")
    return root / f"kustomize-{VERSION}" / "kustomize"


def ensure() -> Path:
    """The binary, built first when missing."""
    path = binary()
    if path.exists():
        return path
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise RuntimeError(f"kustomize {VERSION} is not in {path.parent} and Go is not installed to build it")
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"building kustomize {VERSION} into {path.parent} (go install, about a minute)", file=sys.stderr)
    env = {**os.environ, "GOBIN": str(path.parent)}
    env.setdefault("HOME", str(Path.home()))  # go needs it for its module and build caches
    res = subprocess.run([go, "install", f"{MODULE}@{VERSION}"], env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0 or not path.exists():
        raise RuntimeError(f"go install {MODULE}@{VERSION} failed:\n{res.stdout}{res.stderr}")
    return path


def build(directory: Path) -> str:
    """`kustomize build directory`: the rendered manifests as one YAML stream."""
    res = subprocess.run([str(ensure()), "build", str(directory)], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"kustomize build {directory} failed:\n{res.stderr}")
    return res.stdout


if __name__ == "__main__":
    sys.exit(subprocess.call([str(ensure()), *sys.argv[1:]]))
