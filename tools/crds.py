"""The schemas of the custom resources our manifests use (KEDA's ScaledObject, the
Prometheus Operator's PodMonitor and PrometheusRule, the External Secrets Operator's
ExternalSecret), taken from the CRDs each project publishes in its Go module, fetched
with `go mod download` from the Go module proxy into Go's module cache. Tests validate
the rendered manifests against them, as `kubectl apply --dry-run=server` would in a
cluster with those operators installed."""

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
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS_OPERATOR_VERSION = "v0.94.0"
EXTERNAL_SECRETS_MODULE = "github.com/external-secrets/external-secrets"
EXTERNAL_SECRETS_VERSION = "v0.20.4"


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


def _stored_schema(crd_file: Path) -> dict[str, Any]:
    crd = yaml.safe_load(crd_file.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


@cache
def keda_schema(kind: str = "ScaledObject") -> dict[str, Any]:
    """The OpenAPI v3 schema KEDA's CRD gives `kind` (its served, stored version)."""
    return _stored_schema(
        _module_dir(KEDA_MODULE, KEDA_VERSION) / "config" / "crd" / "bases" / f"keda.sh_{kind.lower()}s.yaml"
    )


@cache
def prometheus_operator_schema(kind: str) -> dict[str, Any]:
    """The schema of a Prometheus Operator CRD (`PodMonitor`, `PrometheusRule`)."""
    crds = _module_dir(PROMETHEUS_OPERATOR_MODULE, PROMETHEUS_OPERATOR_VERSION) / "example" / "prometheus-operator-crd"
    return _stored_schema(crds / f"monitoring.coreos.com_{kind.lower()}s.yaml")


@cache
def external_secrets_schema(kind: str = "ExternalSecret") -> dict[str, Any]:
    """The schema of an External Secrets Operator CRD (`ExternalSecret`)."""
    crds = _module_dir(EXTERNAL_SECRETS_MODULE, EXTERNAL_SECRETS_VERSION) / "config" / "crds" / "bases"
    return _stored_schema(crds / f"external-secrets.io_{kind.lower()}s.yaml")
