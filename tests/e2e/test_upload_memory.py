"""A 300 MB upload through a real gunicorn server must not grow the worker's memory.

The body is streamed from disk by the client; the server spools it to disk
(api/uploads.py) and links the stored file into place (common/storage.py), so
the uvicorn worker's peak RSS (VmHWM) stays flat whatever the upload size.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import requests

from tests.support import stack
from tests.support.keys import StackKeys, headers
from tests.support.processes import api_worker, peak_rss

pytestmark = [pytest.mark.broker, pytest.mark.http]
log = logging.getLogger(__name__)

MiB = 1024 * 1024
PADDING = 300 * MiB
BOUNDARY = "cvjobs-upload-memory-test"


def multipart_file(path: Path, photo: bytes, padding: int) -> tuple[int, str]:
    """Write a multipart body (pipeline=detect, file=photo+zeros) to ``path``, 1 MiB at a time.

    Returns the file part's size and SHA-256.
    """
    digest = hashlib.sha256(photo)
    block = b"\0" * MiB
    with path.open("wb") as out:
        out.write(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="pipeline"\r\n\r\ndetect\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode()
        )
        out.write(photo)
        for _ in range(padding // MiB):
            out.write(block)
            digest.update(block)
        out.write(f"\r\n--{BOUNDARY}--\r\n".encode())
    return len(photo) + padding, digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def test_300_mb_upload_keeps_worker_memory_flat(
    stack_env: dict[str, str], stack_dir: Path, assets: Path, tmp_path: Path, keys: StackKeys
) -> None:
    session = requests.Session()
    session.headers.update(headers(keys.acme))
    body = tmp_path / "body.multipart"
    size, digest = multipart_file(body, (assets / "bus.jpg").read_bytes(), PADDING)
    storage = tmp_path / "storage"
    env = {
        **stack_env,
        "CV_STORAGE_DIR": str(storage),
        "CV_MAX_UPLOAD_BYTES": str(400 * MiB),
    }
    logs = stack_dir / "logs-upload-memory"
    logs.mkdir(exist_ok=True)
    with stack.gunicorn(env, logs) as base:
        worker = api_worker(base)
        before = peak_rss(worker)
        with body.open("rb") as stream:
            response = session.post(
                f"{base}/v1/jobs",
                data=stream,  # a file object: sent in blocks, with its Content-Length
                headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
                timeout=300,
            )
        grown = peak_rss(worker) - before
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        try:
            (stored,) = (storage / "tenants" / "acme" / "jobs" / job_id).glob("input.*")
            assert stored.stat().st_size == size
            assert sha256_of(stored) == digest
            assert not [p for p in (storage / "tmp").rglob("*") if p.is_file()]
            log.info(
                "worker peak RSS grew %.1f MiB over a %.0f MiB upload", grown / MiB, size / MiB
            )
            assert grown < 100 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB"
        finally:
            cancelled = session.delete(f"{base}/v1/jobs/{job_id}", timeout=30)
        assert cancelled.status_code == 204, cancelled.text
        # Cancelled while queued, or deleted when a worker of the session finished it first.
        after = session.get(f"{base}/v1/jobs/{job_id}", timeout=10)
        assert after.status_code == 404 or after.json()["state"] == "cancelled", after.text
