"""deploy/k8s: valid for the API server and KEDA, and hardened, checked offline.

The kustomization is rendered by reading its resources (tests/support/k8s.py); where
``kubectl`` is installed its own ``kubectl kustomize`` must give the same objects. Core
kinds are validated by kubernetes-validate against Kubernetes' schemas (strict: no unknown
field), the KEDA objects against the fields of KEDA's CRDs (keda-v2.16.schema.yaml beside
this file). The policy (tests/support/k8s.py) runs on the manifests and on broken copies
of them, so each rule is known to fail; so does each schema.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from common.contract import QUEUES
from common.settings import REPO_ROOT, Settings
from tests.support.k8s import (
    K8S,
    NAMESPACE,
    Obj,
    container_settings,
    containers,
    declared_ports,
    key,
    matches,
    of_kind,
    problems,
    queues_of,
    render,
)

# The oldest Kubernetes these manifests are written for (PodSecurity labels, policy/v1).
KUBERNETES_VERSION = "1.32.0"
KEDA_API = "keda.sh/v1alpha1"
KEDA_SCHEMA = yaml.safe_load(Path(__file__).with_name("keda-v2.16.schema.yaml").read_text())

OBJECTS = render()
CORE = [obj for obj in OBJECTS if obj["apiVersion"] != KEDA_API]
KEDA = [obj for obj in OBJECTS if obj["apiVersion"] == KEDA_API]


def test_kubectl_kustomize_renders_the_same_objects() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the objects are read from the files")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted(rendered, key=key) == sorted(OBJECTS, key=key)


def test_the_renderer_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamespace: other\n")
    with pytest.raises(ValueError, match="namespace"):
        render(tmp_path)


@pytest.mark.parametrize("obj", CORE, ids=["/".join(key(obj)[::2]) for obj in CORE])
def test_core_objects_are_valid(obj: Obj) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("obj", KEDA, ids=["/".join(key(obj)[::2]) for obj in KEDA])
def test_keda_objects_have_the_fields_of_the_crd(obj: Obj) -> None:
    assert keda_errors(obj) == []


def test_the_manifests_keep_the_policy() -> None:
    assert problems(OBJECTS) == []


def test_every_queue_has_one_worker_deployment() -> None:
    consumed = [
        queue
        for deployment in of_kind(OBJECTS, "Deployment")
        for container in containers(deployment)
        for queue in queues_of(container)
    ]
    assert sorted(consumed) == sorted(QUEUES)


def test_the_api_probes_are_the_health_operations() -> None:
    (api,) = [d for d in of_kind(OBJECTS, "Deployment") if d["metadata"]["name"] == "cvjobs-api"]
    container = containers(api)[0]
    assert "api.server.ApiWorker" in container["command"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    paths = yaml.safe_load((REPO_ROOT / "swagger" / "openapi.yaml").read_text())["paths"]
    assert {"/health/ready", "/health/live"} <= set(paths)


def secret_mounts(deployment: Obj) -> Iterator[tuple[str, set[str]]]:
    """(mount path, file names) of each Secret volume a container mounts."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for container in containers(deployment):
        for mount in container.get("volumeMounts", []):
            secret = volumes[mount["name"]].get("secret")
            if secret is not None:
                yield mount["mountPath"], {item["path"] for item in secret["items"]}


def test_settings_log_in_with_the_mounted_passwords(tmp_path: Path) -> None:
    (config,) = of_kind(OBJECTS, "ConfigMap")
    env = dict(config["data"])
    files = {env["CV_BROKER_PASSWORD_FILE"], env["CV_REDIS_PASSWORD_FILE"]}
    for deployment in of_kind(OBJECTS, "Deployment"):
        mounts = list(secret_mounts(deployment))
        assert all(
            any(str(Path(f).parent) == path and Path(f).name in names for path, names in mounts)
            for f in files
        ), deployment["metadata"]["name"]
    for name in files:
        (tmp_path / Path(name).name).write_text(f"{Path(name).stem}-Zq8wX3kP9rT2\n")
    env = {k: v.replace("/run/cv-secrets", str(tmp_path)) for k, v in env.items()}
    settings = Settings.from_env(env, Path("/nonexistent"))
    assert (
        settings.broker_url == "amqp://cvjobs:broker-Zq8wX3kP9rT2@rabbitmq.example.internal:5672//"
    )
    assert settings.redis_url == "redis://cvjobs:redis-Zq8wX3kP9rT2@redis.example.internal:6379/0"
    settings.require_strong_secrets()


def test_the_api_is_scraped_with_the_mounted_token(tmp_path: Path) -> None:
    api = named(OBJECTS, "Deployment", "cvjobs-api")
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(declared_ports(containers(api)[0])["http"]),
        "prometheus.io/path": "/metrics",
    }
    paths = yaml.safe_load((REPO_ROOT / "swagger" / "openapi.yaml").read_text())["paths"]
    assert "/metrics" in paths
    (config,) = of_kind(OBJECTS, "ConfigMap")
    token_file = Path(config["data"]["CV_METRICS_TOKEN_FILE"])
    assert token_file.name in dict(secret_mounts(api))[str(token_file.parent)]
    (tmp_path / token_file.name).write_text("scrape-Zq8wX3kP9rT2\n")
    settings = Settings.from_env(
        {"CV_METRICS_TOKEN_FILE": str(tmp_path / token_file.name)}, Path("/nonexistent")
    )
    assert settings.scrape_token() == "scrape-Zq8wX3kP9rT2"


def test_only_the_monitoring_namespace_reaches_the_exporters() -> None:
    """The workers listen on the pod's address (not loopback), and the one ingress rule
    over their pods admits the namespace monitoring to the port named metrics."""
    policies = of_kind(OBJECTS, "NetworkPolicy")
    workers = [d for d in of_kind(OBJECTS, "Deployment") if queues_of(containers(d)[0])]
    assert workers
    for deployment in workers:
        container = containers(deployment)[0]
        assert container_settings(container, OBJECTS).worker_metrics_host == "0.0.0.0"
        assert "metrics" in declared_ports(container)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        rules = [
            rule
            for policy in policies
            if matches(policy["spec"]["podSelector"], labels)
            and "Ingress" in policy["spec"]["policyTypes"]
            for rule in policy["spec"].get("ingress", [])
        ]
        monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
        assert rules == [
            {
                "from": [{"namespaceSelector": monitoring}],
                "ports": [{"protocol": "TCP", "port": "metrics"}],
            }
        ], deployment["metadata"]["name"]


def named(objects: list[Obj], kind: str, name: str) -> Obj:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def container_of(objects: list[Obj], name: str) -> Obj:
    return containers(named(objects, "Deployment", name))[0]


def drop(mapping: Obj, field: str) -> None:
    del mapping[field]


def pod_annotations(objects: list[Obj], name: str) -> Obj:
    annotations: Obj = named(objects, "Deployment", name)["spec"]["template"]["metadata"][
        "annotations"
    ]
    return annotations


Change = Callable[[list[Obj]], None]
BROKEN: list[tuple[str, Change, str]] = [
    (
        "no readiness probe",
        lambda o: drop(container_of(o, "cvjobs-worker-gpu"), "readinessProbe"),
        "cvjobs-worker-gpu/worker: no readinessProbe",
    ),
    (
        "no liveness probe",
        lambda o: drop(container_of(o, "cvjobs-api"), "livenessProbe"),
        "cvjobs-api/api: no livenessProbe",
    ),
    (
        "no limits",
        lambda o: drop(container_of(o, "cvjobs-worker-cpu")["resources"], "limits"),
        "no resources.limits of cpu, memory",
    ),
    (
        "root",
        lambda o: named(o, "Deployment", "cvjobs-api")["spec"]["template"]["spec"][
            "securityContext"
        ].update(runAsUser=0),
        "cvjobs-api/api: may run as root",
    ),
    (
        "writable root",
        lambda o: container_of(o, "cvjobs-worker-notify")["securityContext"].update(
            readOnlyRootFilesystem=False
        ),
        "writable root file system",
    ),
    (
        "a capability",
        lambda o: container_of(o, "cvjobs-api")["securityContext"]["capabilities"].update(
            add=["NET_ADMIN"]
        ),
        "keeps capabilities",
    ),
    (
        "floating image",
        lambda o: container_of(o, "cvjobs-api").update(image="cvjobs/api:latest"),
        "is not a full version",
    ),
    (
        "a queue unscaled",
        lambda o: container_of(o, "cvjobs-worker-cpu")["command"].__setitem__(
            5, "preprocess,postprocess,notify"
        ),
        "cvjobs-worker-cpu: scaled on ['postprocess', 'preprocess'], consumes",
    ),
    (
        "queues reordered",
        lambda o: container_of(o, "cvjobs-worker-cpu")["command"].__setitem__(
            5, "postprocess,preprocess"
        ),
        "cvjobs-worker-cpu/worker: metrics port 9101, its -Q implies 9103",
    ),
    (
        "no metrics port",
        lambda o: drop(container_of(o, "cvjobs-worker-gpu"), "ports"),
        "cvjobs-worker-gpu/worker: metrics port None, its -Q implies 9102",
    ),
    (
        "not annotated",
        lambda o: drop(pod_annotations(o, "cvjobs-worker-notify"), "prometheus.io/scrape"),
        "cvjobs-worker-notify: annotated (None, '9104'), not scraped on its metrics port 9104",
    ),
    (
        "a ScaledObject gone",
        lambda o: o.remove(named(o, "ScaledObject", "cvjobs-worker-notify")),
        "cvjobs-worker-notify: 0 ScaledObjects, not one",
    ),
    (
        "no GPU",
        lambda o: drop(
            container_of(o, "cvjobs-worker-gpu")["resources"]["limits"], "nvidia.com/gpu"
        ),
        "no nvidia.com/gpu limit",
    ),
    (
        "replicas beside KEDA",
        lambda o: named(o, "Deployment", "cvjobs-worker-gpu")["spec"].update(replicas=1),
        "sets replicas",
    ),
    (
        "no PodDisruptionBudget",
        lambda o: o.remove(named(o, "PodDisruptionBudget", "cvjobs-api")),
        "cvjobs-api: no PodDisruptionBudget",
    ),
    (
        "a committed Secret",
        lambda o: o.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "x", "namespace": NAMESPACE},
            }
        ),
        "Secret/x: a Secret in the repository",
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN]
)
def test_the_policy_refuses(change: Change, expected: str) -> None:
    objects = copy.deepcopy(OBJECTS)
    change(objects)
    found = problems(objects)
    assert len(found) == 1 and expected in found[0], found


def test_strict_validation_refuses_an_unknown_field() -> None:
    deployment = copy.deepcopy(named(OBJECTS, "Deployment", "cvjobs-api"))
    container = containers(deployment)[0]
    container["readynessProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readynessProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def rabbitmq_metadata(obj: Obj) -> Obj:
    metadata: Obj = obj["spec"]["triggers"][0]["metadata"]
    return metadata


KEDA_BROKEN: list[tuple[str, Change, str]] = [
    ("unknown spec field", lambda o: o[0]["spec"].update(minReplicas=1), "'minReplicas' was"),
    (
        "mode misspelt",
        lambda o: rabbitmq_metadata(o[0]).update(mode="queueLength"),
        "'queueLength' is not one of",
    ),
    ("value not a string", lambda o: rabbitmq_metadata(o[0]).update(value=4), "not of type"),
    (
        "unknown scaler parameter",
        lambda o: rabbitmq_metadata(o[0]).update(queue="inference"),
        "'queue' was unexpected",
    ),
    ("no queue", lambda o: drop(rabbitmq_metadata(o[0]), "queueName"), "'queueName' is a required"),
    ("no target", lambda o: drop(o[0]["spec"], "scaleTargetRef"), "'scaleTargetRef' is a required"),
    (
        "negative replicas",
        lambda o: o[0]["spec"].update(minReplicaCount=-1),
        "less than the minimum",
    ),
    (
        "secret ref without key",
        lambda o: drop(o[1]["spec"]["secretTargetRef"][0], "key"),
        "'key' is a required",
    ),
]


def keda_errors(obj: Obj) -> list[str]:
    schema = {**KEDA_SCHEMA, "$ref": f"#/$defs/{obj['kind']}"}
    return [error.message for error in jsonschema.Draft202012Validator(schema).iter_errors(obj)]


@pytest.mark.parametrize(
    ("change", "expected"), [b[1:] for b in KEDA_BROKEN], ids=[b[0] for b in KEDA_BROKEN]
)
def test_the_keda_schema_refuses(change: Change, expected: str) -> None:
    objects = copy.deepcopy(
        [
            named(KEDA, "ScaledObject", "cvjobs-worker-gpu"),
            of_kind(KEDA, "TriggerAuthentication")[0],
        ]
    )
    change(objects)
    errors = [message for obj in objects for message in keda_errors(obj)]
    assert errors and all(expected in error for error in errors), errors
