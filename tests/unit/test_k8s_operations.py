"""The operations kit in the manifests (k8s/policies, k8s/secrets, k8s/monitoring, the
example overlays): what a platform team checks before admitting a workload."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from flows.telemetry.metrics import Metrics
from tools import kustomize

from .monitoring_names import MONITORING, used_names
from .test_k8s import API_PORT, CLUSTER_PORT, OVERLAY, ROOT, container, env_of, one
from .test_k8s_exactly_once import EOS_OVERLAY


def render(directory: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(kustomize.build(directory)) if d]


@pytest.fixture(scope="module", params=[OVERLAY, EOS_OVERLAY], ids=["cluster", "exactly-once"])
def docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] in ("StatefulSet", "Deployment"))


def pod_labels(docs: list[dict[str, Any]]) -> dict[str, str]:
    return workload(docs)["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return selector["matchLabels"].items() <= labels.items()


def test_no_service_account_token_and_no_secret_values(docs: list[dict[str, Any]]) -> None:
    assert workload(docs)["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert not [d for d in docs if d["kind"] == "Secret"]
    external = one(docs, "ExternalSecret")
    envfrom = {r["secretRef"]["name"] for r in container(workload(docs), "dataflow")["envFrom"] if "secretRef" in r}
    assert envfrom == {external["spec"]["target"]["name"]}
    assert all("remoteRef" in item and "secretKey" in item for item in external["spec"]["data"])


def test_disruption_budget_covers_the_pods(docs: list[dict[str, Any]]) -> None:
    pdb = one(docs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"], pod_labels(docs))
    assert pdb["spec"]["maxUnavailable"] == 1


def test_network_policy(docs: list[dict[str, Any]]) -> None:
    policy = one(docs, "NetworkPolicy")["spec"]
    labels = pod_labels(docs)
    assert selects(policy["podSelector"], labels) and set(policy["policyTypes"]) == {"Ingress", "Egress"}
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["ingress"]}
    assert set(by_port) == {CLUSTER_PORT, API_PORT}, "nothing else comes in"
    (peer,) = by_port[CLUSTER_PORT]
    assert set(peer) == {"podSelector"} and selects(peer["podSelector"], labels), "9999: only the dataflow's pods"
    (monitoring,) = by_port[API_PORT]
    assert set(monitoring) == {"namespaceSelector"}, "/metrics: only the monitoring namespace"
    out_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert {53, CLUSTER_PORT, 9092, 5432, 9042, 8081} <= out_ports
    assert all(rule.get("to") for rule in policy["egress"]), "no egress rule open to everywhere"


def test_monitoring_scrapes_the_api_port_and_ships_the_dashboard(docs: list[dict[str, Any]]) -> None:
    monitor = one(docs, "PodMonitor")
    assert selects(monitor["spec"]["selector"], pod_labels(docs))
    ports = {p["name"]: p["containerPort"] for p in container(workload(docs), "dataflow")["ports"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert ports[endpoint["port"]] == API_PORT and endpoint["path"] == "/metrics"
    dashboard = one(docs, "ConfigMap", "enrichment-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["enrichment.json"]) == json.loads((MONITORING / "dashboard.json").read_text())
    assert one(docs, "PrometheusRule")["spec"]["groups"]


def test_the_process_count_is_set_in_one_place(tmp_path: Path) -> None:
    """`replicas:` in the overlay is the only place: the hostfile's length and Bytewax's
    process count follow it (rendered from a copy with 5)."""
    copy = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", copy)
    kustomization = copy / "overlays" / "example" / "kustomization.yaml"
    text = kustomization.read_text()
    assert text.count("count: 3") == 1
    kustomization.write_text(text.replace("count: 3", "count: 5"))
    for name in kustomization.parent.iterdir():
        assert "name: BYTEWAX_REPLICAS" not in name.read_text(), f"{name.name} sets the count again"
    sts = one(render(copy / "overlays" / "example"), "StatefulSet")
    assert sts["spec"]["replicas"] == 5
    assert env_of(container(sts, "dataflow"))["BYTEWAX_REPLICAS"] == "5"
    assert env_of(container(sts, "init-hostfile", init=True))["BYTEWAX_REPLICAS"] == "5"


def test_dashboard_and_alerts_use_metrics_the_code_exports() -> None:
    """Names checked here against the code's own exposition; tests/integration/
    test_metrics.py checks them again on a running dataflow's /metrics."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.observe_lookup("customers", 0.01)
    metrics.add_written("history", 1, 0.01)
    metrics.set_high("events", 0, 10)
    metrics.add_lookups("customers", 1, 1, 1)
    metrics.add_fallbacks(["output_refused"])
    exported = {line.split("{")[0].split(" ")[0] for line in generate_latest(registry).decode().splitlines()}
    used = used_names()
    assert {"enrichment_consumer_lag", "enrichment_dependency_up", "enrichment_records_failed_total"} <= used
    assert used <= exported, used - exported
