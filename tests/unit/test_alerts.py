"""The alert rules (k8s/monitoring/prometheusrule.yaml) checked and unit-tested by
Prometheus's own promtool (tools/promtool.py, pinned and built once): the rules parse, and
each alert fires on the story it is for and not on its look-alike (rules.test.yaml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tools import promtool

from .monitoring_names import MONITORING, rules


def write_rules(directory: Path, groups: list[dict[str, object]] | None = None) -> None:
    """The PrometheusRule's groups as a Prometheus rule file, beside a copy of the tests."""
    doc = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    (directory / "rules.yaml").write_text(yaml.safe_dump({"groups": groups or doc["spec"]["groups"]}))
    shutil.copy(MONITORING / "rules.test.yaml", directory / "rules.test.yaml")


def run(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool.ensure()), *args], cwd=directory, capture_output=True, text=True, timeout=300)


def test_rules_parse_and_every_alert_has_a_runbook(tmp_path: Path) -> None:
    write_rules(tmp_path)
    check = run(tmp_path, "check", "rules", "rules.yaml")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 5 rules found" in check.stdout + check.stderr
    operations = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text().lower()
    for rule in rules():
        anchor = rule["annotations"]["runbook"].split("#")[1]
        assert f"### {anchor}" in operations, f"docs/operations.md has no runbook for {rule['alert']}"
        assert rule["labels"]["severity"] in ("warning", "critical")


def test_each_alert_fires_on_its_story_only(tmp_path: Path) -> None:
    write_rules(tmp_path)
    test = run(tmp_path, "test", "rules", "rules.test.yaml")
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout + test.stderr


@pytest.mark.parametrize(
    ("alert", "change"),
    [
        ("EnrichmentLagGrowing", ("> 10000", "> 100000")),
        ("EnrichmentDependencyDown", ("== 0", "== 2")),
        ("EnrichmentGaveUp", ("== 3", "== 1")),
    ],
)
def test_the_cases_catch_a_broken_rule(tmp_path: Path, alert: str, change: tuple[str, str]) -> None:
    doc = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    for group in doc["spec"]["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                assert change[0] in rule["expr"]
                rule["expr"] = rule["expr"].replace(*change)
    write_rules(tmp_path, doc["spec"]["groups"])
    test = run(tmp_path, "test", "rules", "rules.test.yaml")
    assert test.returncode != 0 and alert in test.stdout + test.stderr
