from __future__ import annotations

from pathlib import Path

import pytest

from common.settings import REPO_ROOT, Settings, SettingsError


def test_defaults_without_environment(tmp_path: Path) -> None:
    settings = Settings.from_env({}, env_file=tmp_path / "missing.env")
    assert settings == Settings()
    assert settings.max_upload_bytes == 25 * 1024 * 1024
    assert settings.max_image_pixels == 40_000_000
    assert settings.job_ttl_seconds == 7 * 24 * 3600


def test_environment_wins_over_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("CV_MAX_UPLOAD_BYTES=100\nCV_DEVICE=cuda\n# comment\nCV_STORAGE_DIR=data\n")
    settings = Settings.from_env({"CV_DEVICE": "cpu"}, env_file=env_file)
    assert settings.max_upload_bytes == 100
    assert settings.device == "cpu"
    assert settings.resolve(settings.storage_dir) == REPO_ROOT / "data"
    assert settings.resolve(Path("/abs")) == Path("/abs")


def test_malformed_number_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="CV_JOB_TTL_SECONDS='a week'"):
        Settings.from_env({"CV_JOB_TTL_SECONDS": "a week"}, env_file=tmp_path / "x")


def test_repository_env_file_parses() -> None:
    assert Settings.from_env({}).broker_url.startswith("amqp://")
