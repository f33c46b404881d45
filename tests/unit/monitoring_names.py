"""The metric names a dashboard or an alert rule uses, read from its PromQL."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "k8s" / "monitoring"
OURS = re.compile(r"\benrichment_[a-z_]+\b")


def dashboard_exprs() -> list[str]:
    doc = json.loads((MONITORING / "dashboard.json").read_text())
    exprs = [t["expr"] for panel in doc["panels"] for t in panel.get("targets", [])]
    exprs += [v["query"]["query"] for v in doc["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def used_names() -> set[str]:
    """Our metric names (`enrichment_*`) in the dashboard's and the rules' queries."""
    text = " ".join(dashboard_exprs() + [r["expr"] for r in rules()])
    return set(OURS.findall(text))
