"""Starts and stops the real processes the integration tests use.

RabbitMQ and Redis must already run (``make test`` starts them); the tests get
their own RabbitMQ vhost, Redis database and key prefix, and storage directory,
so a running demo stack is never touched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
import requests

from common.settings import REPO_ROOT

VHOST = "cvjobs-test"
MANAGEMENT = "http://127.0.0.1:15672/api"
AUTH = ("guest", "guest")
VENV_BIN = Path(sys.executable).parent
UPKEEP_SECONDS = 2


def require_servers() -> None:
    """Fail (not skip) when RabbitMQ or Redis is down: these tests must run in CI."""
    problems = []
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        problems.append(f"Redis on 127.0.0.1:6379: {exc}")
    try:
        requests.get(f"{MANAGEMENT}/overview", auth=AUTH, timeout=3).raise_for_status()
    except requests.RequestException as exc:
        problems.append(f"RabbitMQ management on 127.0.0.1:15672: {exc}")
    if problems:
        raise RuntimeError(
            "these tests need the real servers; run `make test` (it starts them): "
            + "; ".join(problems)
        )


def fresh_vhost(name: str = VHOST) -> str:
    """An empty vhost (deleted and re-created, so no message of an earlier run remains)."""
    requests.delete(f"{MANAGEMENT}/vhosts/{name}", auth=AUTH, timeout=10)
    requests.put(f"{MANAGEMENT}/vhosts/{name}", auth=AUTH, timeout=10).raise_for_status()
    requests.put(
        f"{MANAGEMENT}/permissions/{name}/guest",
        json={"configure": ".*", "write": ".*", "read": ".*"},
        auth=AUTH,
        timeout=10,
    ).raise_for_status()
    return name


def stack_environment(tmp: Path, weights: Path, segment_weights: Path) -> dict[str, str]:
    env = {
        "CV_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{VHOST}",
        "CV_REDIS_URL": "redis://127.0.0.1:6379/1",
        "CV_REDIS_PREFIX": f"cvtest-{uuid.uuid4().hex[:8]}",
        "CV_STORAGE_DIR": str(tmp / "storage"),
        "CV_DETECT_WEIGHTS": str(weights),
        "CV_SEGMENT_WEIGHTS": str(segment_weights),
        "CV_DEVICE": "cpu",
        "CV_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
        "CV_MAX_IMAGE_PIXELS": str(12_000_000),
        "CV_STEP_TIME_LIMIT_SECONDS": "120",
        # Small chunks and a small window, so short test videos cross chunk boundaries
        # and the window (a chunk done publishes the next) is exercised.
        "CV_MAX_VIDEO_BYTES": str(64 * 1024 * 1024),
        "CV_VIDEO_CHUNK_FRAMES": "8",
        "CV_VIDEO_WINDOW_CHUNKS": "2",
        "CV_WORKER_HEARTBEAT_SECONDS": "5",
        "CV_CALLBACK_ALLOW_LOOPBACK": "1",
        # A revoked key must fail this soon (the tests wait for it).
        "CV_KEY_CACHE_SECONDS": "0.5",
        "CV_ULTRALYTICS_DIR": str(tmp / "ultralytics"),
        # Upkeep every 2 s, so the upkeep test sees it act within seconds.
        "CV_UPKEEP_SECONDS": str(UPKEEP_SECONDS),
    }
    return env


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], grace: float = 20) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def kill_pool(worker: subprocess.Popen[bytes]) -> None:
    """kill -9 every pool process of a prefork worker (its master starts new ones)."""
    import psutil

    children = psutil.Process(worker.pid).children(recursive=True)
    assert children, "the prefork pool has a child process"
    for child in children:
        os.kill(child.pid, signal.SIGKILL)


def start_worker(queue: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    return _spawn(
        [
            str(VENV_BIN / "celery"),
            "-A",
            "celery_worker.app",
            "worker",
            "-Q",
            queue,
            "-n",
            f"{queue}-test-{os.getpid()}@%h",
            "-c",
            "1",
            "-P",
            "prefork",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "INFO",
        ],
        env,
        logs / f"worker-{queue}.log",
    )


@contextmanager
def gunicorn(env: dict[str, str], logs: Path, ready_status: int = 200) -> Iterator[str]:
    """The real API server (gunicorn + uvicorn worker) on a free port; yields its base URL.

    Waits until ``/health/ready`` answers ``ready_status`` (503 for a server whose
    RabbitMQ or Redis is deliberately unreachable).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = _spawn(
        [
            str(VENV_BIN / "gunicorn"),
            "--no-control-socket",
            "-k",
            "uvicorn_worker.UvicornWorker",
            "-w",
            "1",
            "-b",
            f"127.0.0.1:{port}",
            "api.app:create_app()",
        ],
        env,
        logs / "api.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {(logs / 'api.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{base}/health/ready", timeout=5).status_code == ready_status:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gunicorn not ready after 60 s")
            time.sleep(0.2)
        yield base
    finally:
        stop(process)
