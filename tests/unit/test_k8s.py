"""Deployment files against the code: the kustomize overlay rendered by the real kustomize
and validated offline against the Kubernetes API schemas (kubernetes-validate, strict), the
wiring (env names the settings and Bytewax read, ports, process ids from pod names), the
Dockerfile."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from flows.runtime.bytewax.recovery import ClusterPlace, cluster_place
from flows.settings import ENV_NAMES, Settings, redact_dsn
from tools import kustomize

from . import k8s_schemas as schemas

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "k8s" / "overlays" / "example"
BASE = ROOT / "k8s" / "base"
K8S_VERSIONS = ("1.29.0", "1.33.0", "1.37.0")
SECRET_SETTINGS = {f.metadata["env"] for f in fields(Settings) if f.metadata["secret"]}
CLUSTER_PORT = 9999
API_PORT = 3030


def bytewax_env_names() -> set[str]:
    """BYTEWAX_* variables the installed Bytewax reads: bytewax.run's, and the Rust side's
    (the dataflow API), found as strings in the compiled module."""
    spec = importlib.util.find_spec("bytewax.run")
    assert spec is not None and spec.origin is not None
    pkg = Path(spec.origin).parent
    names = set(re.findall(r"BYTEWAX_[A-Z_]+", (pkg / "run.py").read_text()))
    for lib in pkg.glob("_bytewax*.so"):
        names |= {m.decode() for m in re.findall(rb"BYTEWAX_[A-Z_]+", lib.read_bytes())}
    return names


# informational in waxctl's manifests, read by our init container's hostfile script
HOSTFILE_ONLY = {"BYTEWAX_REPLICAS"}


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(kustomize.build(OVERLAY)) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one document of `kind` (the settings' ConfigMap for kind ConfigMap)."""
    name = name or ("enrichment-settings" if kind == "ConfigMap" else None)
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"].startswith(name))]
    assert len(found) == 1, f"one {kind} expected, got {len(found)}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def container(sts: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    return next(c for c in sts["spec"]["template"]["spec"][key] if c["name"] == name)


def test_bytewax_reads_what_the_manifests_set() -> None:
    names = bytewax_env_names()
    for name in (
        "BYTEWAX_POD_NAME",
        "BYTEWAX_STATEFULSET_NAME",
        "BYTEWAX_HOSTFILE_PATH",
        "BYTEWAX_WORKERS_PER_PROCESS",
        "BYTEWAX_RECOVERY_DIRECTORY",
        "BYTEWAX_SNAPSHOT_INTERVAL",
        "BYTEWAX_RECOVERY_BACKUP_INTERVAL",
        "BYTEWAX_DATAFLOW_API_ENABLED",
        "BYTEWAX_DATAFLOW_API_PORT",
        "BYTEWAX_DATAFLOW_API_CACHE_PATH",
    ):
        assert name in names


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_manifests_validate_against_kubernetes_schemas(directory: Path) -> None:
    docs = [d for d in yaml.safe_load_all(kustomize.build(directory)) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget", "NetworkPolicy"} <= set(kinds)
    for doc in docs:
        schemas.validate(doc, K8S_VERSIONS)


def test_validator_rejects_a_broken_manifest(rendered: list[dict[str, Any]]) -> None:
    sts = yaml.safe_load(yaml.safe_dump(one(rendered, "StatefulSet")))
    sts["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSIONS[-1], strict=True)
    sts = yaml.safe_load(yaml.safe_dump(one(rendered, "StatefulSet")))
    sts["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSIONS[-1], strict=True)


def test_statefulset_is_what_waxctl_deploys(rendered: list[dict[str, Any]]) -> None:
    sts, svc = one(rendered, "StatefulSet"), one(rendered, "Service")
    spec = sts["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None"
    assert {"name": "process", "port": CLUSTER_PORT, "targetPort": "process"} in svc["spec"]["ports"]
    labels = spec["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    main = container(sts, "dataflow")
    env = env_of(main)
    assert env["BYTEWAX_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["BYTEWAX_STATEFULSET_NAME"] == sts["metadata"]["name"]
    assert int(env["BYTEWAX_REPLICAS"]) == spec["replicas"]
    assert int(env["BYTEWAX_WORKERS_PER_PROCESS"]) >= 1
    assert env_of(container(sts, "init-hostfile", init=True))["BYTEWAX_REPLICAS"] == env["BYTEWAX_REPLICAS"]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"process": CLUSTER_PORT, "api": API_PORT}
    # recovery: a volume per pod, where Bytewax is told to look
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == ["recovery"]
    assert mounts["recovery"] == env["BYTEWAX_RECOVERY_DIRECTORY"] == "/var/recovery"
    assert int(env["BYTEWAX_SNAPSHOT_INTERVAL"]) > 0 and int(env["BYTEWAX_RECOVERY_BACKUP_INTERVAL"]) >= 0
    assert Path(env["BYTEWAX_HOSTFILE_PATH"]).parent == Path(mounts["hostfile"])
    # the dataflow API (metrics) on, on the port that is scraped and probed
    assert env["BYTEWAX_DATAFLOW_API_ENABLED"] == "true"
    assert int(env["BYTEWAX_DATAFLOW_API_PORT"]) == API_PORT
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == API_PORT and annotations["prometheus.io/path"] == "/metrics"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/metrics", "port": "api"}
    assert env["BYTEWAX_DATAFLOW_API_CACHE_PATH"] in mounts.values(), "a writable place for dataflow.json"


def test_resources_security_and_shutdown(rendered: list[dict[str, Any]]) -> None:
    sts, cm = one(rendered, "StatefulSet"), one(rendered, "ConfigMap")
    pod = sts["spec"]["template"]["spec"]
    for c in pod["initContainers"] + pod["containers"]:
        assert {"cpu", "memory"} <= c["resources"]["requests"].keys() <= c["resources"]["limits"].keys()
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    shutdown = float(cm["data"]["SHUTDOWN_TIMEOUT_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > shutdown, "the process may drain before the kubelet kills it"


def test_env_names_exist_in_the_code(rendered: list[dict[str, Any]]) -> None:
    sts, cm = one(rendered, "StatefulSet"), one(rendered, "ConfigMap")
    keys = secret_keys(rendered)
    known = set(ENV_NAMES) | bytewax_env_names() | HOSTFILE_ONLY
    main = container(sts, "dataflow")
    assert set(env_of(main)) <= known
    assert set(cm["data"]) <= set(ENV_NAMES)
    assert keys == {"PG_PASSWORD", "KAFKA_SASL_PASSWORD", "SCYLLA_PASSWORD"} <= SECRET_SETTINGS
    assert redact_dsn(cm["data"]["PG_DSN"]) == cm["data"]["PG_DSN"], "no password in the ConfigMap"
    refs = {r.get("configMapRef", r.get("secretRef"))["name"] for r in main["envFrom"]}
    assert refs == {cm["metadata"]["name"], one(rendered, "ExternalSecret")["spec"]["target"]["name"]}
    # the settings as the pod sees them parse
    settings = Settings.from_env({**cm["data"], **dict.fromkeys(keys, "")})
    assert settings.recovery_partitions >= int(env_of(main)["BYTEWAX_REPLICAS"])
    # the init container uses every variable it is given
    init = container(sts, "init-hostfile", init=True)
    script = init["command"][-1]
    assert all(f"${name}" in script for name in env_of(init))


def secret_keys(docs: list[dict[str, Any]]) -> set[str]:
    """The variables of the Secret the External Secrets Operator makes (no Secret is committed)."""
    assert not [d for d in docs if d["kind"] == "Secret"], "no secret values in the manifests"
    return {item["secretKey"] for item in one(docs, "ExternalSecret")["spec"]["data"]}


def hostfile_lines(sts: dict[str, Any], tmp_path: Path) -> list[str]:
    """Run the init container's script as the kubelet would (sh, its env)."""
    init = container(sts, "init-hostfile", init=True)
    env = {k: v for k, v in env_of(init).items() if isinstance(v, str)}
    env["POD_NAMESPACE"] = sts["metadata"]["namespace"]
    env["BYTEWAX_HOSTFILE_PATH"] = str(tmp_path / "hostfile.txt")
    subprocess.run(init["command"], env={"PATH": "/usr/bin:/bin", **env}, check=True, capture_output=True)
    return (tmp_path / "hostfile.txt").read_text().splitlines()


def test_process_ids_and_addresses_from_pod_names(
    rendered: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sts, svc = one(rendered, "StatefulSet"), one(rendered, "Service")
    name, ns, replicas = sts["metadata"]["name"], sts["metadata"]["namespace"], sts["spec"]["replicas"]
    lines = hostfile_lines(sts, tmp_path)
    assert lines == [
        f"{name}-{i}.{svc['metadata']['name']}.{ns}.svc.cluster.local:{CLUSTER_PORT}" for i in range(replicas)
    ]
    env = env_of(container(sts, "dataflow"))
    from bytewax.run import _parse_args

    for i in range(replicas):
        pod_env = {
            "BYTEWAX_POD_NAME": f"{name}-{i}",
            "BYTEWAX_STATEFULSET_NAME": env["BYTEWAX_STATEFULSET_NAME"],
            "BYTEWAX_HOSTFILE_PATH": str(tmp_path / "hostfile.txt"),
        }
        # what bytewax.run itself derives ...
        for k, v in pod_env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr(sys, "argv", ["bytewax.run", "dataflow"])
        args = _parse_args()
        assert args.process_id == i
        assert args.addresses.split(";") == lines
        # ... and what the recovery directory's share is computed from
        assert cluster_place([], pod_env) == ClusterPlace(i, replicas)


# --- Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            op, _, rest = line.strip().partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    steps = dockerfile()
    base = [rest for op, rest in steps if op == "FROM"]
    assert len(base) == 1 and re.fullmatch(r"python:3\.12\.\d+-slim(-\w+)?@sha256:[0-9a-f]{64}", base[0]), (
        "slim Python 3.12, pinned by digest"
    )
    assert ("RUN", "pip install --no-cache-dir --only-binary=:all: -r requirements.txt") in steps
    copies = [rest.split() for op, rest in steps if op == "COPY"]
    assert ["requirements.txt", "./"] in copies and ["dataflow.py", "./"] in copies and ["flows", "./flows"] in copies
    user = [rest for op, rest in steps if op == "USER"]
    assert user and user[-1] not in ("0", "root")
    assert steps[-1] == ("CMD", '["python", "-m", "bytewax.run", "dataflow"]')
    exposed = {int(p) for op, rest in steps if op == "EXPOSE" for p in rest.split()}
    assert exposed == {CLUSTER_PORT, API_PORT}
    # the build context keeps what the image copies
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert {"!requirements.txt", "!dataflow.py", "!flows/"} <= set(ignore)
    # every requirement pinned with its hashes (generated by `make lock`), so the image's pip checks them
    requirements, current = [], ""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        current += line.split("#")[0].rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
        else:
            requirements += [" ".join(current.split())] if current.strip() else []
            current = ""
    assert "bytewax==0.21.1" in {req.split()[0] for req in requirements}
    for req in requirements:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+( --hash=sha256:[0-9a-f]{64})+", req), f"pinned and hashed: {req}"


def test_waxctl_values_match_the_overlay(rendered: list[dict[str, Any]]) -> None:
    """`waxctl dataflow deploy dataflow.py -V k8s/waxctl/values.yaml ...` (docs/scaling.md) deploys the
    same settings, secret, scraping and resources as the example overlay."""
    values = yaml.safe_load((ROOT / "k8s" / "waxctl" / "values.yaml").read_text())
    sts, cm, external = one(rendered, "StatefulSet"), one(rendered, "ConfigMap"), one(rendered, "ExternalSecret")
    env = {k: str(v) for k, v in values["env"].items()}
    assert set(env) <= set(ENV_NAMES)
    Settings.from_env(env)
    assert float(env.pop("SHUTDOWN_TIMEOUT_SECONDS")) < 10, "the chart's terminationGracePeriodSeconds is 10"
    assert env == {k: v for k, v in cm["data"].items() if k != "SHUTDOWN_TIMEOUT_SECONDS"}
    assert external["spec"]["target"]["name"] == values["envFromSecret"]
    assert values["podAnnotations"] == sts["spec"]["template"]["metadata"]["annotations"]
    assert values["resources"] == container(sts, "dataflow")["resources"]


def test_image_runs_under_waxctl_too() -> None:
    """The chart runs `sh ./entrypoint.sh` in the image's working directory."""
    steps = dockerfile()
    assert ("WORKDIR", "/app") in steps and ("ENV", "PYTHONPATH=/app") in steps
    assert ("COPY", "k8s/waxctl/entrypoint.sh k8s/waxctl/entrypoint-recovery.sh ./") in steps
    script = (ROOT / "k8s" / "waxctl" / "entrypoint.sh").read_text()
    assert 'exec python -m bytewax.run "${BYTEWAX_PYTHON_FILE_PATH:-dataflow}"' in script
    assert "!k8s/waxctl/*.sh" in (ROOT / ".dockerignore").read_text().split()
