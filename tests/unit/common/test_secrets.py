"""Password files and the refusal of known default passwords (common/secrets.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.secrets import require_strong, weak_passwords, with_password
from common.settings import Settings, SettingsError

STRONG = "amqp://cvjobs:Zq8v3LmW2xPa@rabbit:5672//"
STRONG_REDIS = "redis://cvjobs:H7kQ2mVx9wLp@redis:6379/0"


def test_a_password_file_goes_into_a_url_without_one(tmp_path: Path) -> None:
    secret = tmp_path / "broker.password"
    secret.write_text("p@ss/w:rd\n")
    url = with_password("amqp://cvjobs@rabbit:5672//", secret)
    assert url == "amqp://cvjobs:p%40ss%2Fw%3Ard@rabbit:5672//"
    assert with_password(STRONG, secret) == STRONG  # a URL's own password wins
    assert with_password(STRONG, None) == STRONG


def test_settings_read_the_files_and_a_missing_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "r").write_text("H7kQ2mVx9wLp")
    settings = Settings.from_env(
        {
            "CV_REDIS_URL": "redis://cvjobs@redis:6379/0",
            "CV_REDIS_PASSWORD_FILE": str(tmp_path / "r"),
        },
        env_file=tmp_path / "none",
    )
    assert settings.redis_url == STRONG_REDIS
    with pytest.raises(SettingsError, match="cannot read the password file"):
        Settings.from_env(
            {
                "CV_BROKER_URL": "amqp://cvjobs@rabbit//",
                "CV_BROKER_PASSWORD_FILE": str(tmp_path / "x"),
            },
            env_file=tmp_path / "none",
        )


@pytest.mark.parametrize(
    ("broker", "redis", "problems"),
    [
        (STRONG, STRONG_REDIS, 0),
        ("amqp://guest:guest@127.0.0.1:5672//", STRONG_REDIS, 1),
        ("amqp://cvjobs:cvjobs@rabbitmq:5672//", STRONG_REDIS, 1),
        ("amqp://cvjobs@rabbitmq:5672//", STRONG_REDIS, 1),
        (STRONG, "redis://127.0.0.1:6379/0", 1),
        (STRONG, "redis://:changeme@127.0.0.1:6379/0", 1),
        ("amqp://guest:guest@127.0.0.1:5672//", "redis://127.0.0.1:6379/0", 2),
        ("memory://", "redis://cvjobs:H7kQ2mVx9wLp@redis/0", 0),  # no broker password to guess
    ],
)
def test_weak_passwords(broker: str, redis: str, problems: int) -> None:
    assert len(weak_passwords(broker, redis)) == problems


def test_only_development_starts_with_defaults() -> None:
    defaults = Settings()
    with pytest.raises(SettingsError, match="known default"):
        defaults.require_strong_secrets()
    require_strong("development", defaults.broker_url, defaults.redis_url)  # no error


def test_the_server_entry_point_refuses_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from api.app import create_app

    monkeypatch.setenv("CV_BROKER_URL", "amqp://guest:guest@127.0.0.1:1//")
    monkeypatch.setenv("CV_ENV", "production")
    with pytest.raises(SettingsError, match="broker URL"):
        create_app()
