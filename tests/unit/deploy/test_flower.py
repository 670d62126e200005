"""Flower, Celery's monitoring UI: `make flower` (scripts/flower.sh) and the compose
service (docker/flower-start.sh), both on loopback and behind basic auth.

The passwords (Flower's own and the broker's) must reach Flower through its environment,
never its command line, where ``ps`` shows them. scripts/flower.sh runs here for real, in
a copy of the repository layout, against the ``memory://`` broker; the compose entrypoint
runs with a stand-in for ``celery`` that prints how it was started.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from common.settings import REPO_ROOT
from tests.support.flower import Flower, serve

STAND_IN = '#!/bin/sh\necho "args: $*"\nenv | grep -E "^(CELERY|FLOWER)_" | sort\n'


def test_the_scripts_parse() -> None:
    subprocess.run(["bash", "-n", str(REPO_ROOT / "scripts" / "flower.sh")], check=True)
    subprocess.run(["sh", "-n", str(REPO_ROOT / "docker" / "flower-start.sh")], check=True)


def test_compose_publishes_flower_on_loopback_only() -> None:
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert services["flower"]["build"]["dockerfile"] == "docker/flower.Dockerfile"


def test_compose_entrypoint_passes_the_passwords_in_the_environment(tmp_path: Path) -> None:
    secrets = tmp_path / "cv-secrets"
    secrets.mkdir()
    subprocess.run(
        ["sh", str(REPO_ROOT / "docker" / "secrets.sh")],
        env={"PATH": "/usr/bin:/bin", "CV_SECRETS_DIR": str(secrets)},
        capture_output=True,
        check=True,
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "celery").write_text(STAND_IN)
    (bin_dir / "celery").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
        "CV_SECRETS_DIR": str(secrets),
        "CV_BROKER_URL": "amqp://cvjobs@rabbitmq:5672//",
        "CV_BROKER_PASSWORD_FILE": str(secrets / "broker.password"),
        "CV_REDIS_PASSWORD_FILE": str(secrets / "redis.password"),
    }
    out = subprocess.run(
        ["sh", str(REPO_ROOT / "docker" / "flower-start.sh"), "--address=0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.splitlines()
    broker, flower = ((secrets / f"{n}.password").read_text().strip() for n in ("broker", "flower"))
    assert out == [
        "args: flower --address=0.0.0.0",
        f"CELERY_BROKER_URL=amqp://cvjobs:{broker}@rabbitmq:5672//",
        f"FLOWER_BASIC_AUTH=cvjobs:{flower}",
    ]


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[Flower]:
    env = {
        "CV_ENV": "development",
        "CV_BROKER_URL": "memory://",
        "CV_BROKER_PASSWORD_FILE": "",
        "CV_REDIS_PASSWORD_FILE": "",
    }
    with serve(tmp_path, env) as running:
        yield running


def test_make_flower_serves_on_loopback_behind_basic_auth(flower: Flower) -> None:
    password_file = flower.root / "var" / "secrets" / "flower.password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert len(flower.password) >= 32
    assert requests.get(f"{flower.url}/", timeout=5).status_code == 401
    assert flower.get("/api/workers", password="wrong").status_code == 401
    assert flower.get("/").status_code == 200
    command = Path(f"/proc/{flower.pid}/cmdline").read_bytes().split(b"\0")
    assert b"--address=127.0.0.1" in command and b"celery_worker.app" in command
    assert flower.password.encode() not in b" ".join(command)
    listening = {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.Process(flower.pid).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }
    assert listening == {("127.0.0.1", int(flower.url.rpartition(":")[2]))}


def test_the_flower_image_needs_only_the_settings_code() -> None:
    """docker/flower.Dockerfile installs Celery, Flower and python-dotenv, and copies
    common/: what `python -m common.settings` imports must stay within that."""
    code = (
        "import json, sys; import common.settings; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    # Underscored names: the interpreter's own and the editable install's path finder.
    imported = {m for m in json.loads(out) if not m.startswith("_")} - sys.stdlib_module_names
    assert imported <= {"common", "dotenv"}, imported
