"""The schemas of the custom resources our manifests use (KEDA's ScaledObject), taken from
the CRDs KEDA publishes in its Go module, fetched with `go mod download` from the Go module
proxy into Go's module cache. Tests validate the rendered manifests against them, as
`kubectl apply --dry-run=server` would in a cluster with KEDA installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import yaml

KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_VERSION = "v2.21.0"


def _module_dir(module: str, version: str) -> Path:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    env.setdefault("HOME", str(Path.home()))
    with tempfile.TemporaryDirectory() as tmp:  # outside any module
        res = subprocess.run(
            [go, "mod", "download", "-json", f"{module}@{version}"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    if res.returncode != 0:
        raise RuntimeError(f"go mod download {module}@{version} failed:\n{res.stdout}{res.stderr}")
    return Path(json.loads(res.stdout)["Dir"])


@cache
def keda_schema(kind: str = "ScaledObject") -> dict[str, Any]:
    """The OpenAPI v3 schema KEDA's CRD gives `kind` (its served, stored version)."""
    crd_file = _module_dir(KEDA_MODULE, KEDA_VERSION) / "config" / "crd" / "bases" / f"keda.sh_{kind.lower()}s.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]
