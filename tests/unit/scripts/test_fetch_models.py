"""`make models` fails clearly where the weights cannot be downloaded, leaving no partial file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.settings import REPO_ROOT


def test_offline_fetch_fails_with_instructions(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "scripts/fetch_models.py", "--dest", str(tmp_path), "yolov8n.pt"],
        cwd=REPO_ROOT,
        env={"CV_WEIGHTS_BASE_URL": "http://127.0.0.1:1/assets", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot download http://127.0.0.1:1/assets/yolov8n.pt" in result.stderr
    assert f"Copy yolov8n.pt from a machine that has it into {tmp_path}/" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_kept(tmp_path: Path) -> None:
    (tmp_path / "yolov8n.pt").write_bytes(b"weights")
    result = subprocess.run(
        [sys.executable, "scripts/fetch_models.py", "--dest", str(tmp_path), "yolov8n.pt"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"CV_WEIGHTS_BASE_URL": "http://127.0.0.1:1/", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0 and "already there (7 bytes)" in result.stdout
