"""scripts/flower.sh (`make flower`) started for a test, from a copy of the layout it
expects (scripts/, .venv) in a temporary directory, on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from common.settings import REPO_ROOT


@dataclass(frozen=True)
class Flower:
    url: str
    root: Path
    pid: int

    @property
    def password(self) -> str:
        return (self.root / "var" / "secrets" / "flower.password").read_text()

    def get(self, path: str, password: str | None = None) -> requests.Response:
        """GET ``path``; as user cvjobs with ``password`` (default: the generated one)."""
        auth = ("cvjobs", self.password if password is None else password)
        return requests.get(f"{self.url}{path}", auth=auth, timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve(root: Path, env: dict[str, str], timeout: float = 60) -> Iterator[Flower]:
    """Flower as `make flower` runs it, with ``env`` (CV_* settings) on top of PATH and HOME;
    ready once /healthcheck answers. Stopped (its process group) on the way out."""
    (root / "scripts").mkdir()
    script = root / "scripts" / "flower.sh"
    script.write_text((REPO_ROOT / "scripts" / "flower.sh").read_text())
    (root / ".venv").symlink_to(Path(sys.prefix))
    port = free_port()
    process = subprocess.Popen(
        ["bash", str(script), f"--port={port}"],
        env={"PATH": os.environ["PATH"], "HOME": str(root), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{url}/healthcheck", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                output = process.stdout.read() if process.stdout else b""
                raise AssertionError(f"flower did not start: {output.decode(errors='replace')}")
            time.sleep(0.2)
        yield Flower(url, root, process.pid)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        if process.stdout:
            process.stdout.close()
