"""The exactly-once deployment (k8s/exactly-once, k8s/overlays/example-exactly-once): rendered
by the real kustomize, validated against the Kubernetes API schemas and, for KEDA's
ScaledObject, against the CRD KEDA publishes (strict: unknown fields refused); and wired to
the code: no recovery volume or cluster settings, the ScaledObject on the Deployment and on
the group, topic and brokers the ConfigMap gives the dataflow."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from flows.settings import ENV_NAMES, Settings
from tools import kustomize

from . import k8s_schemas as schemas
from .test_k8s import K8S_VERSIONS, bytewax_env_names, container, env_of, one

ROOT = Path(__file__).resolve().parents[2]
EOS = ROOT / "k8s" / "exactly-once"
EOS_OVERLAY = ROOT / "k8s" / "overlays" / "example-exactly-once"


def render(directory: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(kustomize.build(directory)) if d]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render(EOS_OVERLAY)


def validate_scaledobject(doc: dict[str, Any]) -> None:
    schemas.validate(doc, K8S_VERSIONS)


@pytest.mark.parametrize("directory", [EOS, EOS_OVERLAY], ids=["exactly-once", "overlay"])
def test_manifests_validate_against_kubernetes_and_keda_schemas(directory: Path) -> None:
    docs = render(directory)
    assert {"ConfigMap", "Deployment", "ScaledObject", "PodDisruptionBudget"} <= {d["kind"] for d in docs}
    for doc in docs:
        schemas.validate(doc, K8S_VERSIONS)


def test_keda_schema_rejects_a_broken_scaledobject(rendered: list[dict[str, Any]]) -> None:
    good = one(rendered, "ScaledObject")
    bad = copy.deepcopy(good)
    bad["spec"]["maxReplicaCount"] = "six"
    with pytest.raises(jsonschema.ValidationError):
        validate_scaledobject(bad)
    bad = copy.deepcopy(good)
    bad["spec"]["scaleTargetRef"]["nmae"] = "enrichment"
    with pytest.raises(jsonschema.ValidationError):
        validate_scaledobject(bad)
    bad = copy.deepcopy(good)
    del bad["spec"]["triggers"]
    with pytest.raises(jsonschema.ValidationError):
        validate_scaledobject(bad)


def test_deployment_of_group_members_without_recovery_or_cluster(rendered: list[dict[str, Any]]) -> None:
    dep, cm = one(rendered, "Deployment"), one(rendered, "ConfigMap")
    assert not [d for d in rendered if d["kind"] in ("StatefulSet", "Service", "PersistentVolumeClaim")]
    settings = Settings.from_env({**cm["data"], "PG_PASSWORD": "", "SCYLLA_PASSWORD": "", "KAFKA_SASL_PASSWORD": ""})
    assert settings.exactly_once
    pod = dep["spec"]["template"]["spec"]
    main = container(dep, "dataflow")
    env = env_of(main)
    assert set(env) <= set(ENV_NAMES) | bytewax_env_names()
    for cluster_or_recovery in (
        "BYTEWAX_RECOVERY_DIRECTORY",
        "BYTEWAX_HOSTFILE_PATH",
        "BYTEWAX_POD_NAME",
        "BYTEWAX_STATEFULSET_NAME",
        "BYTEWAX_REPLICAS",
    ):
        assert cluster_or_recovery not in env, "each pod is a process of its own; the group's offsets are the state"
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]
    assert int(env["BYTEWAX_WORKERS_PER_PROCESS"]) == 2
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_timeout_seconds
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/metrics", "port": "api"}


def test_scaledobject_scales_the_deployment_on_the_groups_lag(rendered: list[dict[str, Any]]) -> None:
    dep, cm, so = one(rendered, "Deployment"), one(rendered, "ConfigMap"), one(rendered, "ScaledObject")
    assert so["metadata"]["namespace"] == dep["metadata"]["namespace"]
    target = so["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])
    [trigger] = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == cm["data"]["CONSUMER_GROUP"]
    assert meta["topic"] == cm["data"]["INPUT_TOPIC"]
    assert meta["bootstrapServers"] == cm["data"]["KAFKA_BOOTSTRAP_SERVERS"]
    assert meta["offsetResetPolicy"] == "earliest", "as the dataflow's auto.offset.reset"
    assert meta["allowIdleConsumers"] == "false", "no more members than partitions"
    assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
