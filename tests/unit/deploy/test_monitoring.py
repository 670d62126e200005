"""deploy/prometheus and deploy/grafana: promtool accepts them, and every metric they use
is one the service exposes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from api.metrics import LiveCollector
from common.metrics import metric_names
from common.settings import REPO_ROOT

PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "cvjobs.json"
METRIC = re.compile(r"\b(cv_[a-z0-9_]+)\b")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing in CI (scripts/services.sh installs prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def service_metrics() -> set[str]:
    live = LiveCollector(dict, dict, cache_seconds=0)
    return metric_names() | {family.name for family in live.describe()}


def rule_expressions() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_promtool_accepts_the_scrape_config_and_its_rules(tmp_path: Path) -> None:
    tool = promtool()
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path / name)
    (tmp_path / "cvjobs-metrics.token").write_text("a-token\n")  # the file it names
    config = subprocess.run(
        [tool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    rules = subprocess.run(
        [tool, "check", "rules", str(PROMETHEUS / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_the_alerts_cover_what_operators_must_hear() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {
        "CvBacklogGrowing",
        "CvJobFailureRate",
        "CvQueueWithoutConsumer",
        "CvJobsStuck",
    } <= names


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_used_exists_in_the_service(source: str) -> None:
    expressions = rule_expressions() if source == "alerts" else dashboard_expressions()
    used = {name for expr in expressions for name in METRIC.findall(expr)}
    assert used, "no cv_ metric found"
    assert used - service_metrics() == set()


def test_the_dashboard_shows_every_metric_family() -> None:
    used = {name for expr in dashboard_expressions() for name in METRIC.findall(expr)}
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in used}
    exposed = {
        re.sub(r"_(total|bucket|count|sum|created)$", "", name) for name in service_metrics()
    }
    assert exposed - families == set()
