from __future__ import annotations

from pathlib import Path

import pytest

from common.settings import REPO_ROOT, Settings, SettingsError, parse_bool


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


def test_every_setting_is_in_the_readme_table_and_nothing_else() -> None:
    import re
    from dataclasses import fields

    readme = (REPO_ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("## Operating it")]
    documented = set(re.findall(r"^\| `CV_([A-Z0-9_]+)` \|", table, re.MULTILINE))
    knobs = {f.name.upper() for f in fields(Settings) if f.name != "environ"}
    # ...and the variables the configuration files take (${CV_DETECT_WEIGHTS:-...}).
    for config in (REPO_ROOT / "config").glob("*.yaml"):
        knobs.update(re.findall(r"\$\{CV_([A-Z0-9_]+)", config.read_text()))
    assert documented == knobs


@pytest.mark.parametrize(
    ("text", "value"), [("1", True), ("Yes", True), (" on ", True), ("false", False), ("0", False)]
)
def test_booleans(text: str, value: bool) -> None:
    assert parse_bool(text) is value
    assert (
        Settings.from_env(
            {"CV_CALLBACK_ALLOW_LOOPBACK": text}, env_file=Path("/x")
        ).callback_allow_loopback
        is value
    )


def test_a_malformed_boolean_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="CV_CALLBACK_ALLOW_LOOPBACK='maybe'"):
        Settings.from_env({"CV_CALLBACK_ALLOW_LOOPBACK": "maybe"}, env_file=Path("/x"))


def test_the_shell_scripts_read_settings_through_the_same_parser(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "CV_API_BIND": "0.0.0.0:9001", "CV_INFERENCE_PROCESSES": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "common.settings", "api_bind", "inference_processes"],
        cwd=tmp_path,  # any directory: the project is installed
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == ["0.0.0.0:9001", "3"]
    bad = subprocess.run(
        [sys.executable, "-m", "common.settings", "nope"], cwd=tmp_path, capture_output=True
    )
    assert bad.returncode == 2
