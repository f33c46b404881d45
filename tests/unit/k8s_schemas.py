"""Offline validation of rendered manifests: Kubernetes' own kinds against the API schemas
(kubernetes-validate, strict), custom resources against the CRDs their operators publish
(tools/crds.py), strict too: an unknown field is refused, as `kubectl apply
--validate=strict` does."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate

from tools import crds

CUSTOM: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): lambda: crds.keda_schema("ScaledObject"),
    ("monitoring.coreos.com/v1", "PodMonitor"): lambda: crds.prometheus_operator_schema("PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): lambda: crds.prometheus_operator_schema("PrometheusRule"),
    ("external-secrets.io/v1", "ExternalSecret"): lambda: crds.external_secrets_schema("ExternalSecret"),
}


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD's schema as the API server applies it with strict field validation: an object
    with declared properties takes no other field unless it preserves unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                # Go's regexp takes `^(?i)...`; Python wants inline flags first
                node["pattern"] = re.sub(r"^\^\(\?([a-z]+)\)", r"(?\1)^", node["pattern"])
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@cache
def _custom(api_version: str, kind: str) -> dict[str, Any]:
    return strict(CUSTOM[(api_version, kind)]())


def validate(doc: dict[str, Any], k8s_versions: Iterable[str]) -> None:
    """Raise a ValidationError unless `doc` is valid for its kind."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM:
        jsonschema.validate(doc, _custom(*key))
        return
    for version in k8s_versions:
        kubernetes_validate.validate(doc, version, strict=True)
