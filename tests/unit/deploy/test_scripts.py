"""docker/*.sh: the passwords compose generates, and how Redis, RabbitMQ and the services
read them.

The scripts run here under ``sh`` with their paths moved into a temporary directory and
stand-ins for redis-server and rabbitmq-server that print how they were started. The
services' side is common/settings.py built from docker-compose.yml's environment: all
three must agree on the same password.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from common.settings import REPO_ROOT, Settings

DOCKER = REPO_ROOT / "docker"
SECRETS_DIR = "/run/cv-secrets"
STAND_IN = '#!/bin/sh\necho "$0 $*"\necho "RABBITMQ_CONFIG_FILES=${RABBITMQ_CONFIG_FILES:-}"\n'


def run(script: str, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        ["sh", str(DOCKER / script), *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    """A secrets directory as the compose ``secrets`` service leaves it."""
    folder = tmp_path / "cv-secrets"
    folder.mkdir()
    run("secrets.sh", {"CV_SECRETS_DIR": str(folder)})
    return folder


@pytest.fixture
def stand_ins(tmp_path: Path) -> str:
    """A PATH whose redis-server and rabbitmq-server print their arguments and exit."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("redis-server", "rabbitmq-server"):
        (folder / name).write_text(STAND_IN)
        (folder / name).chmod(0o755)
    return f"{folder}:/usr/bin:/bin"


def password(secrets: Path, name: str) -> str:
    return (secrets / f"{name}.password").read_text().strip()


def test_secrets_are_random_readable_by_group_only(secrets: Path) -> None:
    files = sorted(path.name for path in secrets.iterdir())
    assert files == [
        "broker.password",
        "flower.password",
        "grafana.password",
        "metrics.token",
        "redis.password",
    ]
    values = {(secrets / name).read_text().strip() for name in files}
    assert len(values) == len(files)
    for name in files:
        assert re.fullmatch(r"[A-Za-z0-9]{32}", (secrets / name).read_text().strip())
        assert stat.S_IMODE((secrets / name).stat().st_mode) == 0o440


def test_secrets_are_written_once(secrets: Path) -> None:
    before = {name: password(secrets, name) for name in ("broker", "redis")}
    (secrets / "redis.password").unlink()
    out = run("secrets.sh", {"CV_SECRETS_DIR": str(secrets)})
    assert "broker.password kept" in out and "redis.password written" in out
    assert password(secrets, "broker") == before["broker"]
    assert password(secrets, "redis") != before["redis"]


def test_redis_has_one_user_with_the_generated_password(
    secrets: Path, stand_ins: str, tmp_path: Path
) -> None:
    acl = tmp_path / "redis" / "users.acl"
    env = {"PATH": stand_ins, "CV_SECRETS_DIR": str(secrets), "CV_REDIS_ACL_FILE": str(acl)}
    out = run("redis-start.sh", env, "--appendonly", "yes")
    assert f"redis-server --aclfile {acl} --appendonly yes" in out
    digest = hashlib.sha256(password(secrets, "redis").encode()).hexdigest()
    assert acl.read_text().splitlines() == [
        "user default off",
        f"user cvjobs on #{digest} ~* &* +@all -@admin",
    ]
    assert stat.S_IMODE(acl.stat().st_mode) == 0o600


def test_rabbitmq_reads_only_its_own_configuration(
    secrets: Path, stand_ins: str, tmp_path: Path
) -> None:
    conf = tmp_path / "rabbitmq"
    env = {"PATH": stand_ins, "CV_SECRETS_DIR": str(secrets), "CV_RABBITMQ_CONF_DIR": str(conf)}
    out = run("rabbitmq-start.sh", env, "rabbitmq-server")
    assert f"RABBITMQ_CONFIG_FILES={conf}/conf.d" in out
    assert [path.name for path in (conf / "conf.d").iterdir()] == ["10-cvjobs.conf"]
    settings = (conf / "conf.d" / "10-cvjobs.conf").read_text().splitlines()
    assert "loopback_users.guest = true" in settings
    assert f"load_definitions = {conf}/definitions.json" in settings
    definitions = json.loads((conf / "definitions.json").read_text())
    assert definitions["users"] == [
        {"name": "cvjobs", "password": password(secrets, "broker"), "tags": ["administrator"]}
    ]
    assert definitions["permissions"][0]["user"] == "cvjobs"


def test_rabbitmq_definitions_escape_the_password(
    secrets: Path, stand_ins: str, tmp_path: Path
) -> None:
    (secrets / "broker.password").chmod(0o640)
    (secrets / "broker.password").write_text('  a"b\\c  \n')
    conf = tmp_path / "rabbitmq"
    env = {"PATH": stand_ins, "CV_SECRETS_DIR": str(secrets), "CV_RABBITMQ_CONF_DIR": str(conf)}
    run("rabbitmq-start.sh", env, "rabbitmq-server")
    users = json.loads((conf / "definitions.json").read_text())["users"]
    assert users[0]["password"] == 'a"b\\c'


@pytest.mark.parametrize("script", ["redis-start.sh", "rabbitmq-start.sh"])
def test_an_empty_password_file_stops_the_server(
    script: str, secrets: Path, stand_ins: str, tmp_path: Path
) -> None:
    for path in secrets.iterdir():
        path.chmod(0o640)
        path.write_text("\n")
    env = {
        "PATH": stand_ins,
        "CV_SECRETS_DIR": str(secrets),
        "CV_REDIS_ACL_FILE": str(tmp_path / "users.acl"),
        "CV_RABBITMQ_CONF_DIR": str(tmp_path / "rabbitmq"),
    }
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run(script, env, "rabbitmq-server")
    assert "is empty" in failed.value.stderr


def service_environment(service: str, secrets: Path) -> dict[str, str]:
    """A service's compose environment, ${VAR:-default} at its default and the password
    files moved into ``secrets``."""
    env = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"][service][
        "environment"
    ]
    resolved = {key: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)) for key, value in env.items()}
    return {
        key: value.replace(SECRETS_DIR, str(secrets)) if key.endswith("_FILE") else value
        for key, value in resolved.items()
    }


@pytest.mark.parametrize("service", ["api", "worker-cpu", "worker-notify", "worker-gpu"])
def test_services_log_in_with_the_generated_passwords(service: str, secrets: Path) -> None:
    settings = Settings.from_env(service_environment(service, secrets), Path("/nonexistent"))
    assert settings.env == "production"
    assert settings.broker_url == f"amqp://cvjobs:{password(secrets, 'broker')}@rabbitmq:5672//"
    assert settings.redis_url == f"redis://cvjobs:{password(secrets, 'redis')}@redis:6379/0"
    assert settings.scrape_token() == (secrets / "metrics.token").read_text().strip()
    settings.require_strong_secrets()
