"""Pinned Go tools (kustomize), built once with `go install` from the Go module
proxy into a cache outside the clone (`~/.cache/enrichment-tools`, or
`ENRICHMENT_TOOLS_DIR`). Needs Go (1.22+) on the PATH the first time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def binary(name: str, version: str) -> Path:
    """Where the tool is (or will be) cached."""
    root = Path(os.environ.get("ENRICHMENT_TOOLS_DIR") or Path.home() / ".cache" / "enrichment-tools")
    return root / f"{name}-{version}" / name


def ensure(name: str, package: str, version: str, minutes: str = "about a minute") -> Path:
    """The binary, built first when missing."""
    path = binary(name, version)
    if path.exists():
        return path
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise RuntimeError(f"{name} {version} is not in {path.parent} and Go is not installed to build it")
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"building {name} {version} into {path.parent} (go install, {minutes})", file=sys.stderr)
    env = {**os.environ, "GOBIN": str(path.parent)}
    env.setdefault("HOME", str(Path.home()))  # go needs it for its module and build caches
    res = subprocess.run([go, "install", f"{package}@{version}"], env=env, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0 or not path.exists():
        raise RuntimeError(f"go install {package}@{version} failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
    return path
