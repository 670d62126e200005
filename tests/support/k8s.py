"""deploy/k8s read as kustomize renders it, and the policy its manifests must keep.

``render`` reads a kustomization of plain resources (no generators or transformers: it
refuses them rather than render something else than kustomize would). ``problems`` lists
what breaks the policy: every container non-root, read-only, without capabilities, under
the RuntimeDefault seccomp profile, with a pinned image, probes and resources; every
Deployment under a PodDisruptionBudget; every worker Deployment (a ``celery worker -Q``)
scaled by exactly one ScaledObject on exactly its queues, the inference one with a GPU, its
exporter declared (the containerPort named metrics) on the port its first queue implies
under the settings of its ConfigMaps, and its pods annotated for Prometheus with that port;
every object in the namespace; no Secret. tests/unit/deploy/test_k8s.py runs both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from common.settings import REPO_ROOT, Settings
from tests.support.workers import metrics_port, worker_queues

K8S = REPO_ROOT / "deploy" / "k8s"
NAMESPACE = "cvjobs"
FULL_VERSION = re.compile(r":v?\d+\.\d+\.\d+[^:/]*$")

Obj = dict[str, Any]


def render(folder: Path = K8S) -> list[Obj]:
    """The objects ``kubectl kustomize folder`` renders, for a kustomization of plain
    resources (files, or folders with a kustomization of their own)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources"}
    if unsupported:
        raise ValueError(f"{folder}: this renderer knows no {sorted(unsupported)}")
    objects: list[Obj] = []
    for resource in kustomization["resources"]:
        path = folder / resource
        if path.is_dir():
            objects += render(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


def key(obj: Obj) -> tuple[str, str, str]:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


def containers(deployment: Obj) -> list[Obj]:
    spec = deployment["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def command_of(container: Obj) -> list[str]:
    return [str(word) for word in container.get("command", []) + container.get("args", [])]


def queues_of(container: Obj) -> set[str]:
    """The queues of a ``celery ... worker -Q a,b`` command (none for another program)."""
    return set(worker_queues(command_of(container)))


def container_settings(container: Obj, objects: list[Obj]) -> Settings:
    """The settings of a container's ConfigMaps (envFrom), password files left out."""
    names = {ref["configMapRef"]["name"] for ref in container.get("envFrom", [])}
    env = {
        name: value
        for config in of_kind(objects, "ConfigMap")
        if config["metadata"]["name"] in names
        for name, value in config.get("data", {}).items()
        if not name.endswith("_FILE")
    }
    return Settings.from_env(env, Path("/nonexistent"))


def declared_ports(container: Obj) -> dict[str, int]:
    return {port.get("name", ""): port["containerPort"] for port in container.get("ports", [])}


def matches(selector: Obj, labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels", {})
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def container_problems(where: str, container: Obj, pod: Obj) -> list[str]:
    found = []
    pod_security = pod.get("securityContext", {})
    security = {**pod_security, **container.get("securityContext", {})}
    if security.get("runAsNonRoot") is not True or security.get("runAsUser", 0) == 0:
        found.append(f"{where}: may run as root (runAsNonRoot, runAsUser)")
    if security.get("readOnlyRootFilesystem") is not True:
        found.append(f"{where}: writable root file system")
    if security.get("allowPrivilegeEscalation") is not False or security.get("privileged"):
        found.append(f"{where}: may gain privileges")
    capabilities = security.get("capabilities", {})
    if "ALL" not in capabilities.get("drop", []) or capabilities.get("add"):
        found.append(f"{where}: keeps capabilities (drop: [ALL], no add)")
    if security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        found.append(f"{where}: no RuntimeDefault seccomp profile")
    if not FULL_VERSION.search(container["image"]) and "@sha256:" not in container["image"]:
        found.append(f"{where}: image {container['image']!r} is not a full version")
    for probe in ("readinessProbe", "livenessProbe"):
        if probe not in container:
            found.append(f"{where}: no {probe}")
    resources = container.get("resources", {})
    for part, names in (("requests", ("cpu", "memory")), ("limits", ("cpu", "memory"))):
        missing = [name for name in names if name not in resources.get(part, {})]
        if missing:
            found.append(f"{where}: no resources.{part} of {', '.join(missing)}")
    return found


def deployment_problems(deployment: Obj, objects: list[Obj]) -> list[str]:
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    found = []
    if pod.get("automountServiceAccountToken") is not False:
        found.append(f"{name}: mounts a service account token")
    for container in containers(deployment):
        found += container_problems(f"{name}/{container['name']}", container, pod)
    if not any(
        matches(pdb["spec"]["selector"], labels) for pdb in of_kind(objects, "PodDisruptionBudget")
    ):
        found.append(f"{name}: no PodDisruptionBudget")
    queues = set().union(*(queues_of(c) for c in containers(deployment)))
    if queues:
        found += worker_problems(deployment, queues, objects)
    return found


def worker_problems(deployment: Obj, queues: set[str], objects: list[Obj]) -> list[str]:
    name = deployment["metadata"]["name"]
    found = []
    if "replicas" in deployment["spec"]:
        found.append(f"{name}: sets replicas, which its ScaledObject owns")
    scalers = [
        so
        for so in of_kind(objects, "ScaledObject")
        if so["spec"]["scaleTargetRef"]["name"] == name
        and so["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    ]
    if len(scalers) != 1:
        return [*found, f"{name}: {len(scalers)} ScaledObjects, not one"]
    auths = {obj["metadata"]["name"] for obj in of_kind(objects, "TriggerAuthentication")}
    scaled = set()
    for trigger in scalers[0]["spec"]["triggers"]:
        if trigger["type"] != "rabbitmq" or trigger["metadata"].get("mode") != "QueueLength":
            found.append(f"{name}: a trigger that is not a rabbitmq QueueLength")
            continue
        if trigger.get("authenticationRef", {}).get("name") not in auths:
            found.append(f"{name}: a trigger without a TriggerAuthentication of this kustomization")
        scaled.add(trigger["metadata"]["queueName"])
    if scaled != queues:
        found.append(f"{name}: scaled on {sorted(scaled)}, consumes {sorted(queues)}")
    if "inference" in queues:
        for container in containers(deployment):
            if "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {}):
                found.append(f"{name}/{container['name']}: no nvidia.com/gpu limit")
    return found + metrics_problems(deployment, objects)


def metrics_problems(deployment: Obj, objects: list[Obj]) -> list[str]:
    name = deployment["metadata"]["name"]
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    found = []
    for container in containers(deployment):
        where = f"{name}/{container['name']}"
        wanted = metrics_port(command_of(container), container_settings(container, objects))
        if not wanted:
            continue
        declared = declared_ports(container).get("metrics")
        if declared != wanted:
            found.append(f"{where}: metrics port {declared}, its -Q implies {wanted}")
            continue
        scraped = (annotations.get("prometheus.io/scrape"), annotations.get("prometheus.io/port"))
        if scraped != ("true", str(declared)):
            found.append(f"{name}: annotated {scraped}, not scraped on its metrics port {declared}")
    return found


def problems(objects: list[Obj]) -> list[str]:
    """What breaks the rules of the module docstring in a list of objects."""
    found = []
    for obj in objects:
        where = "/".join(key(obj)[::2])
        if obj["kind"] == "Secret":
            found.append(f"{where}: a Secret in the repository")
        elif obj["kind"] != "Namespace" and obj["metadata"].get("namespace") != NAMESPACE:
            found.append(f"{where}: not in namespace {NAMESPACE}")
    for deployment in of_kind(objects, "Deployment"):
        found += deployment_problems(deployment, objects)
    targets = {obj["metadata"]["name"] for obj in of_kind(objects, "Deployment")}
    for so in of_kind(objects, "ScaledObject"):
        if so["spec"]["scaleTargetRef"]["name"] not in targets:
            found.append(f"{so['metadata']['name']}: scales no Deployment of this kustomization")
    return found
