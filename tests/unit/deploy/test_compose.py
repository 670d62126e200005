"""docker-compose*.yml: hardened by default, and accepted by docker-compose 1.29.

Every service but the API publishes ports on loopback only, runs as an unprivileged user
without capabilities and new privileges on a read-only root, uses an image pinned to a
full version, and long-running ones have a healthcheck. The overlays are checked merged
over docker-compose.yml, as compose runs them. The same rules run on bad documents, so
they are known to fail. ``docker-compose config`` validates the files where the binary
exists (Debian's docker-compose package); with CI=true a missing binary fails.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.settings import REPO_ROOT

BASE = REPO_ROOT / "docker-compose.yml"
OVERLAYS = sorted(REPO_ROOT.glob("docker-compose.*.yml"))
# The one service published on every interface: the front door, behind API keys and
# CV_ALLOWED_HOSTS. Nothing else is exempt from any rule.
PUBLIC_SERVICES = frozenset({"api"})
LOOPBACK = frozenset({"127.0.0.1", "::1", "[::1]"})
FULL_VERSION = re.compile(r"^v?\d+\.\d+\.\d+")

Service = dict[str, Any]


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def merge(base: Any, overlay: Any) -> Any:
    """``overlay`` over ``base`` as compose merges files: mappings key by key, lists joined
    (so an overlay cannot hide a port or a capability), anything else replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(overlay, list):
        return base + overlay
    return overlay


def host_ip(port: object) -> str:
    """The host address a ``ports`` entry publishes on ("" for every interface)."""
    if isinstance(port, dict):
        return str(port.get("host_ip", ""))
    text = str(port).split("/")[0]
    if text.startswith("["):
        return text[: text.index("]") + 1]
    parts = text.split(":")
    return parts[0] if len(parts) == 3 else ""


def pinned(image: str) -> bool:
    if "$" in image:
        return False
    if "@sha256:" in image:
        return True
    tag = image.rpartition("/")[2].partition(":")[2]
    return bool(FULL_VERSION.match(tag))


def dockerfile_lines(path: Path) -> list[str]:
    text = path.read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip()[:1] not in ("", "#")]


def dockerfile_problems(name: str, path: Path) -> list[str]:
    problems = []
    stages: set[str] = set()
    users = []
    for line in dockerfile_lines(path):
        words = line.split()
        instruction = words[0].upper()
        if instruction == "FROM":
            image, *rest = [word for word in words[1:] if not word.startswith("--")]
            if image not in stages and image != "scratch" and not pinned(image):
                problems.append(f"{name}: {path.name} starts FROM {image}, not a full version")
            if len(rest) == 2 and rest[0].upper() == "AS":
                stages.add(rest[1])
        elif instruction == "USER":
            users.append(words[1])
    if not users or users[-1].split(":")[0] in ("0", "root"):
        problems.append(f"{name}: {path.name} ends as root (no USER of another uid)")
    return problems


def has_healthcheck(service: Service, dockerfile: Path | None) -> bool:
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable", False) and check.get("test") not in (["NONE"], None)
    if dockerfile is None:
        return False
    return any(
        line.split()[0].upper() == "HEALTHCHECK" and line.split()[1].upper() != "NONE"
        for line in dockerfile_lines(dockerfile)
    )


def one_shot(services: dict[str, Service]) -> set[str]:
    """Services others wait for to exit (``service_completed_successfully``)."""
    done = set()
    for service in services.values():
        depends = service.get("depends_on") or {}
        if isinstance(depends, dict):
            for name, spec in depends.items():
                if (spec or {}).get("condition") == "service_completed_successfully":
                    done.add(name)
    return done


def service_problems(name: str, service: Service, root: Path, exits: bool) -> list[str]:
    problems = []
    if name not in PUBLIC_SERVICES:
        for port in service.get("ports") or []:
            if host_ip(port) not in LOOPBACK:
                problems.append(f"{name}: publishes {port!r} beyond loopback")
    user = str(service.get("user") or "").split(":")[0]
    if user in ("", "0", "root"):
        problems.append(f"{name}: runs as root (user: {service.get('user')!r})")
    if "ALL" not in [str(cap).upper() for cap in service.get("cap_drop") or []]:
        problems.append(f"{name}: keeps capabilities (no cap_drop: [ALL])")
    if service.get("cap_add") or service.get("privileged"):
        problems.append(f"{name}: adds privileges (cap_add or privileged)")
    if "no-new-privileges:true" not in (service.get("security_opt") or []):
        problems.append(f"{name}: may gain privileges (no no-new-privileges:true)")
    if service.get("read_only") is not True:
        problems.append(f"{name}: writable root file system (no read_only: true)")
    dockerfile = None
    if "build" in service:
        build = service["build"]
        context = root / (build if isinstance(build, str) else build.get("context", "."))
        file = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        dockerfile = context / file
        problems += dockerfile_problems(name, dockerfile)
    elif not pinned(str(service.get("image", ""))):
        problems.append(f"{name}: image {service.get('image')!r} is not a full version")
    if not exits and not has_healthcheck(service, dockerfile):
        problems.append(f"{name}: no healthcheck")
    return problems


def problems(document: dict[str, Any], root: Path = REPO_ROOT) -> list[str]:
    """What breaks the rules of the module docstring in one compose document."""
    services: dict[str, Service] = document.get("services") or {}
    exits = one_shot(services)
    found = []
    for name, service in services.items():
        found += service_problems(name, service, root, name in exits)
    return found


def stacks() -> list[tuple[str, dict[str, Any]]]:
    base = load(BASE)
    return [(BASE.name, base)] + [
        (f"{BASE.name} + {path.name}", merge(base, load(path))) for path in OVERLAYS
    ]


@pytest.mark.parametrize(("name", "document"), stacks(), ids=[name for name, _ in stacks()])
def test_stack_is_hardened(name: str, document: dict[str, Any]) -> None:
    assert problems(document) == []


def test_password_readers_join_the_secrets_group_read_only() -> None:
    services = load(BASE)["services"]
    readers = {
        name: service
        for name, service in services.items()
        if name != "secrets" and any("cv-secrets:" in str(v) for v in service.get("volumes", []))
    }
    assert set(readers) >= {"redis", "rabbitmq", "api", "worker-cpu", "worker-gpu"}
    for name, service in readers.items():
        assert "10002" in service.get("group_add", []), name
        assert "cv-secrets:/run/cv-secrets:ro" in service["volumes"], name


def test_overlays_extend_services_of_the_base_file() -> None:
    services = load(BASE)["services"]
    for path in OVERLAYS:
        assert set(load(path)["services"]) <= set(services), path.name


GOOD: Service = {
    "image": "redis:7.4.6",
    "user": "999:999",
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges:true"],
    "read_only": True,
    "ports": ["127.0.0.1:6379:6379"],
    "healthcheck": {"test": ["CMD", "redis-cli", "ping"]},
}


@pytest.mark.parametrize(
    "change",
    [
        {"ports": ["[::1]:6379:6379", {"target": 6379, "host_ip": "127.0.0.1"}]},
        {"image": "redis@sha256:" + "0" * 64},
        {"image": "registry.example:5000/cv/redis:7.4.6-bookworm"},
    ],
)
def test_rules_accept(change: Service) -> None:
    assert problems({"services": {"cache": {**GOOD, **change}}}) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"ports": ["6379:6379"]}, "publishes '6379:6379' beyond loopback"),
        ({"ports": ["0.0.0.0:6379:6379"]}, "beyond loopback"),
        ({"ports": ["6379"]}, "beyond loopback"),
        ({"ports": [6379]}, "beyond loopback"),
        ({"ports": [{"target": 6379, "published": 6379}]}, "beyond loopback"),
        ({"ports": [{"target": 6379, "host_ip": "0.0.0.0"}]}, "beyond loopback"),
        ({"ports": ["${BIND:-127.0.0.1}:6379:6379"]}, "beyond loopback"),
        ({"user": None}, "runs as root"),
        ({"user": "0:0"}, "runs as root"),
        ({"user": "root"}, "runs as root"),
        ({"cap_drop": ["NET_RAW"]}, "keeps capabilities"),
        ({"cap_add": ["NET_ADMIN"]}, "adds privileges"),
        ({"privileged": True}, "adds privileges"),
        ({"security_opt": []}, "may gain privileges"),
        ({"read_only": False}, "writable root file system"),
        ({"image": "redis"}, "not a full version"),
        ({"image": "redis:latest"}, "not a full version"),
        ({"image": "redis:7"}, "not a full version"),
        ({"image": "redis:${TAG}"}, "not a full version"),
        ({"healthcheck": {"disable": True}}, "no healthcheck"),
    ],
)
def test_rules_refuse(change: Service, expected: str) -> None:
    found = problems({"services": {"cache": {**GOOD, **change}}})
    assert len(found) == 1 and expected in found[0], found


def test_rules_refuse_a_root_or_floating_dockerfile(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM python:3.11-slim AS base\nFROM base\nUSER 0\n")
    service = {**GOOD, "build": {"context": "."}}
    del service["image"]
    assert problems({"services": {"app": service}}, root=tmp_path) == [
        "app: Dockerfile starts FROM python:3.11-slim, not a full version",
        "app: Dockerfile ends as root (no USER of another uid)",
    ]


def test_an_overlay_cannot_hide_a_port() -> None:
    base = {"services": {"cache": copy.deepcopy(GOOD)}}
    overlay = {"services": {"cache": {"ports": ["6380:6379"]}}}
    assert problems(merge(base, overlay)) == ["cache: publishes '6380:6379' beyond loopback"]


def test_one_shot_services_need_no_healthcheck() -> None:
    job = {key: value for key, value in GOOD.items() if key != "healthcheck"}
    waiting = {**GOOD, "depends_on": {"job": {"condition": "service_completed_successfully"}}}
    assert problems({"services": {"job": job, "cache": waiting}}) == []


COMPOSE_FILES = [[BASE.name]] + [[BASE.name, path.name] for path in OVERLAYS]


@pytest.mark.parametrize("files", COMPOSE_FILES, ids=[" + ".join(f) for f in COMPOSE_FILES])
def test_docker_compose_accepts(files: list[str]) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-compose is not installed: CI must run this check")
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    args = [binary, *(arg for name in files for arg in ("-f", name)), "config", "-q"]
    result = subprocess.run(
        args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
