"""deploy/prometheus and deploy/grafana: promtool accepts them, every metric they use is
one the service exposes, and they scrape the services where they listen.

The scrape configs are checked by promtool, each credentials file replaced by one made
here. Debian's promtool is built without Kubernetes discovery: there kubernetes.yml is
checked without its ``kubernetes_sd_configs``, whose fields are checked apart
(tests/support/prometheus.py). compose.yml's targets are held to docker-compose.yml, and
kubernetes.yml's relabelling is run on the pods of deploy/k8s: each service is found on
the port it serves, workers on the one their first queue implies (tests/support/workers.py).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from api.metrics import LiveCollector
from common.metrics import metric_names
from common.settings import REPO_ROOT, Settings
from tests.support.k8s import (
    command_of,
    container_settings,
    containers,
    declared_ports,
    of_kind,
    render,
)
from tests.support.prometheus import kubernetes_sd_problems, pod_targets, relabel
from tests.support.workers import metrics_port

PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"
GRAFANA = REPO_ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "cvjobs.json"
METRIC = re.compile(r"\b(cv_[a-z0-9_]+)\b")
# Every scrape config here: local mode (make start), docker compose, Kubernetes.
CONFIGS = ["prometheus.yml", "compose.yml", "kubernetes.yml"]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing in CI (scripts/services.sh installs prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False
    )


@functools.cache
def knows_kubernetes() -> bool:
    """Whether this promtool has Kubernetes discovery (Debian's build has none)."""
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe.yml"
        probe.write_text("scrape_configs: [{job_name: x, kubernetes_sd_configs: [{role: pod}]}]\n")
        result = run_promtool("check", "config", str(probe))
    return "field kubernetes_sd_configs not found" not in result.stdout + result.stderr


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def checkable_copy(name: str, folder: Path) -> Path:
    """Scrape config ``name`` in ``folder`` beside alerts.yml, its credentials files made
    there, and without Kubernetes discovery for a promtool that has none (its fields
    checked here instead)."""
    config = load(PROMETHEUS / name)
    shutil.copy(PROMETHEUS / "alerts.yml", folder / "alerts.yml")
    kubernetes = knows_kubernetes()
    for job in config["scrape_configs"]:
        authorization = job.get("authorization", {})
        if "credentials_file" in authorization:
            token = folder / f"{job['job_name']}.token"
            token.write_text("a-token\n")
            authorization["credentials_file"] = str(token)
        if not kubernetes and "kubernetes_sd_configs" in job:
            for entry in job.pop("kubernetes_sd_configs"):
                assert kubernetes_sd_problems(entry) == [], job["job_name"]
    copy = folder / name
    copy.write_text(yaml.safe_dump(config))
    return copy


def service_metrics() -> set[str]:
    live = LiveCollector(dict, dict, cache_seconds=0)
    return metric_names() | {family.name for family in live.describe()}


def rule_expressions() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_scrape_config_is_checked() -> None:
    found = sorted(path.name for path in PROMETHEUS.glob("*.yml") if path.name != "alerts.yml")
    assert found == sorted(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_promtool_accepts_the_scrape_config(name: str, tmp_path: Path) -> None:
    config = run_promtool("check", "config", str(checkable_copy(name, tmp_path)))
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_accepts_the_rules() -> None:
    rules = run_promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_promtool_refuses_a_misspelt_field(tmp_path: Path) -> None:
    config = load(PROMETHEUS / "compose.yml")
    config["scrape_configs"][0]["metric_path"] = "/metrics"
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(config))
    assert run_promtool("check", "config", str(tmp_path / "bad.yml")).returncode != 0


def test_the_kubernetes_discovery_fields_are_checked() -> None:
    assert kubernetes_sd_problems({"role": "pod", "namespaces": {"names": ["cvjobs"]}}) == []
    assert kubernetes_sd_problems({"role": "pods", "namespace": {}}) == [
        "unknown field 'namespace'",
        "role 'pods' is not one of ['endpoints', 'endpointslice', 'ingress', 'node', 'pod', "
        "'service']",
    ]


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


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = load(REPO_ROOT / "docker-compose.yml")["services"]
    return services


def compose_settings(services: dict[str, Any]) -> Settings:
    env = services["api"]["environment"]
    return Settings.from_env(
        {name: str(value) for name, value in env.items() if not name.endswith("_FILE")},
        Path("/nonexistent"),
    )


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Target -> source of a service's volumes."""
    return {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}


def test_compose_prometheus_scrapes_every_worker_on_the_port_of_its_first_queue() -> None:
    services = compose_services()
    settings = compose_settings(services)
    assert settings.worker_metrics_host == "0.0.0.0"  # the containers' network, not loopback
    wanted = {
        (name, metrics_port(service["command"], settings))
        for name, service in services.items()
        if metrics_port(service.get("command") or [], settings)
    }
    jobs = {job["job_name"]: job for job in load(PROMETHEUS / "compose.yml")["scrape_configs"]}
    scraped = {
        (name, entry["port"])
        for entry in jobs["cvjobs-workers"]["dns_sd_configs"]
        for name in entry["names"]
    }
    assert scraped == wanted
    assert ("worker-cpu", 9101) in scraped  # preprocess,postprocess: one port, the first's


def test_compose_prometheus_scrapes_the_api_with_its_token() -> None:
    services = compose_services()
    jobs = {job["job_name"]: job for job in load(PROMETHEUS / "compose.yml")["scrape_configs"]}
    (target,) = [t for group in jobs["cvjobs-api"]["static_configs"] for t in group["targets"]]
    assert target == "api:8000" and services["api"]["ports"] == ["${CV_API_PORT:-8000}:8000"]
    token = jobs["cvjobs-api"]["authorization"]["credentials_file"]
    assert token == services["api"]["environment"]["CV_METRICS_TOKEN_FILE"]
    prometheus = services["prometheus"]
    volumes = mounts(prometheus)
    assert volumes[str(Path(token).parent)] == "cv-secrets"
    config = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    config_file = Path(config.partition("=")[2])
    assert volumes[str(config_file)] == "./deploy/prometheus/compose.yml"
    assert volumes[str(config_file.with_name("alerts.yml"))] == "./deploy/prometheus/alerts.yml"


def test_compose_grafana_shows_the_dashboard_over_the_compose_prometheus() -> None:
    services = compose_services()
    grafana = services["grafana"]
    volumes = mounts(grafana)
    assert all((REPO_ROOT / source).exists() for source in volumes.values() if "/" in source)
    provisioning = GRAFANA / "provisioning"
    (datasource,) = load(provisioning / "datasources" / "prometheus.yml")["datasources"]
    url = urlsplit(datasource["url"])
    assert datasource["isDefault"] and datasource["type"] == "prometheus"
    assert url.hostname in services and f":{url.port}" in services[url.hostname]["ports"][0]
    (provider,) = load(provisioning / "dashboards" / "cvjobs.yml")["providers"]
    assert volumes[provider["options"]["path"] + "/cvjobs.json"] == "./deploy/grafana/cvjobs.json"
    secret = grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    assert volumes[str(Path(secret).parent)] == "cv-secrets"


@pytest.mark.parametrize("ip", ["10.244.1.7", "fd00:10:244::7"])
def test_the_kubernetes_scrape_config_finds_each_pod_where_it_serves(ip: str) -> None:
    """Every Deployment's pod lands in one job, at its pod's address: the API on its http
    port and path with the token, each worker on the port its first queue implies."""
    config = load(PROMETHEUS / "kubernetes.yml")
    objects = render()
    host = f"[{ip}]" if ":" in ip else ip
    found = set()
    wanted = set()
    for deployment in of_kind(objects, "Deployment"):
        name = deployment["metadata"]["name"]
        container = containers(deployment)[0]
        port = metrics_port(command_of(container), container_settings(container, objects))
        if port:
            wanted.add(("cvjobs-workers", name, f"{host}:{port}", "/metrics"))
        else:
            http = declared_ports(container)["http"]
            wanted.add(("cvjobs-api", name, f"{host}:{http}", "/metrics"))
        for job in config["scrape_configs"]:
            (discovery,) = job["kubernetes_sd_configs"]
            if deployment["metadata"]["namespace"] not in discovery["namespaces"]["names"]:
                continue
            for labels in pod_targets(deployment, ip):
                kept = relabel(labels, job["relabel_configs"])
                if kept is not None:
                    path = kept.get("__metrics_path__", job.get("metrics_path", "/metrics"))
                    found.add((job["job_name"], kept["service"], kept["__address__"], path))
    assert found == wanted
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "credentials_file" in jobs["cvjobs-api"]["authorization"]
    assert "authorization" not in jobs["cvjobs-workers"]
