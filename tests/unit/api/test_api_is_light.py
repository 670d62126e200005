"""The API process must not import the heavy worker stack."""

from __future__ import annotations

import subprocess
import sys

from common.settings import REPO_ROOT

PROBE = """
import sys
from api.app import create_app
from common.settings import Settings
app = create_app(Settings(broker_url="memory://", redis_url="redis://127.0.0.1:1/0"))
client = app.test_client(base_url="http://localhost")
assert client.get("/health/live").status_code == 200
heavy = sorted(m for m in ("torch", "ultralytics", "cv2", "facenet_pytorch", "numpy")
               if m in sys.modules)
print(",".join(heavy))
"""


def test_api_never_imports_torch_ultralytics_or_opencv() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", PROBE],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == ""
