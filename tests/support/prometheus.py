"""Enough of Prometheus to run a scrape config on the objects of deploy/k8s offline.

``pod_targets`` gives the labels Kubernetes discovery (``role: pod``) sets on each target of
a Deployment's pod: one per declared container port, the address ``ip:port`` (brackets
for IPv6). ``relabel`` applies ``relabel_configs`` to them as Prometheus does: actions
``keep``, ``drop`` and ``replace``, each regex anchored at both ends, ``$1`` in the
replacement, an empty result removing the label. Any other action or field is refused
rather than guessed. ``kubernetes_sd_problems`` checks the fields of a
``kubernetes_sd_configs`` entry, for the promtool builds (Debian's) that know none.
"""

from __future__ import annotations

import re
from typing import Any

Labels = dict[str, str]

RELABEL_FIELDS = {"source_labels", "separator", "regex", "replacement", "target_label", "action"}
# Prometheus' KubernetesSDConfig (discovery/kubernetes), the HTTP client's fields aside.
KUBERNETES_SD_FIELDS = {
    "api_server",
    "role",
    "kubeconfig_file",
    "namespaces",
    "selectors",
    "attach_metadata",
}
KUBERNETES_ROLES = {"endpoints", "endpointslice", "service", "pod", "node", "ingress"}
NAMESPACES = {"names", "own_namespace"}


def label_name(name: str) -> str:
    """A Kubernetes label or annotation name as a Prometheus label: other characters ``_``."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_targets(deployment: dict[str, Any], ip: str) -> list[Labels]:
    """What ``role: pod`` discovers of one running pod of ``deployment`` at ``ip``."""
    template = deployment["spec"]["template"]
    pod: Labels = {
        "__meta_kubernetes_namespace": deployment["metadata"]["namespace"],
        "__meta_kubernetes_pod_name": f"{deployment['metadata']['name']}-0",
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_phase": "Running",
    }
    for kind, values in (("label", "labels"), ("annotation", "annotations")):
        for name, value in template["metadata"].get(values, {}).items():
            pod[f"__meta_kubernetes_pod_{kind}_{label_name(name)}"] = str(value)
            pod[f"__meta_kubernetes_pod_{kind}present_{label_name(name)}"] = "true"
    host = f"[{ip}]" if ":" in ip else ip
    targets = []
    for container in template["spec"]["containers"]:
        for port in container.get("ports", []):
            targets.append(
                {
                    **pod,
                    "__address__": f"{host}:{port['containerPort']}",
                    "__meta_kubernetes_pod_container_name": container["name"],
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                }
            )
    return targets


def relabel(labels: Labels, configs: list[dict[str, Any]]) -> Labels | None:
    """``labels`` after ``configs``; None where a keep or drop discards the target."""
    labels = dict(labels)
    for config in configs:
        unknown = set(config) - RELABEL_FIELDS
        if unknown:
            raise ValueError(f"relabel fields not simulated: {sorted(unknown)}")
        value = config.get("separator", ";").join(
            labels.get(name, "") for name in config.get("source_labels", [])
        )
        match = re.fullmatch(config.get("regex", "(.*)"), value)
        action = config.get("action", "replace")
        if (action == "keep" and match is None) or (action == "drop" and match is not None):
            return None
        if action == "replace" and match is not None:
            replacement = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", config.get("replacement", "$1"))
            result = match.expand(replacement)
            if result:
                labels[config["target_label"]] = result
            else:
                labels.pop(config["target_label"], None)
        elif action not in ("keep", "drop", "replace"):
            raise ValueError(f"relabel action {action!r} is not simulated")
    return labels


def kubernetes_sd_problems(entry: dict[str, Any]) -> list[str]:
    found = [f"unknown field {name!r}" for name in sorted(set(entry) - KUBERNETES_SD_FIELDS)]
    if entry.get("role") not in KUBERNETES_ROLES:
        found.append(f"role {entry.get('role')!r} is not one of {sorted(KUBERNETES_ROLES)}")
    namespaces = entry.get("namespaces", {})
    found += [f"unknown namespaces field {name!r}" for name in set(namespaces) - NAMESPACES]
    if not all(isinstance(name, str) for name in namespaces.get("names", [])):
        found.append("namespaces.names holds a non-string")
    return found
