"""Starts and stops the real processes the integration tests use.

RabbitMQ and Redis must already run (``make test`` starts them); the tests get
their own RabbitMQ vhost, Redis database and key prefix, and storage directory,
so a running demo stack is never touched.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import redis
import requests

from common.settings import REPO_ROOT, Settings, SettingsError

VHOST = "cvjobs-test"
MANAGEMENT = "http://127.0.0.1:15672/api"
VENV_BIN = Path(sys.executable).parent
UPKEEP_SECONDS = 2
METRICS_TOKEN = f"metrics-{uuid.uuid4().hex}"


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive ports free now on 127.0.0.1, below the ephemeral
    range: a port the kernel may hand to an outgoing connection meanwhile (as ``bind(0)``
    ones are) could be taken by the time a worker listens on it."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    randomly = random.Random()
    for _ in range(500):
        base = randomly.randrange(20000, max(20001, low - count))
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports below {low}")


def _local() -> Settings:
    """The servers `make test` started: the URLs in .env, passwords from var/secrets."""
    return Settings.from_env({})


def broker_auth() -> tuple[str, str]:
    """The service user of the local RabbitMQ (also an administrator of its console)."""
    parts = urlsplit(_local().broker_url)
    return unquote(parts.username or ""), unquote(parts.password or "")


def broker_url(vhost: str = VHOST, port: int = 5672, password: bool = True) -> str:
    """The local RabbitMQ's URL on ``vhost``; without the password, the process given it
    reads the password file named in .env."""
    user, secret = broker_auth()
    credentials = f"{user}:{quote(secret, safe='')}" if password else user
    return f"amqp://{credentials}@127.0.0.1:{port}/{quote(vhost, safe='')}"


def redis_url(db: int = 1, port: int = 6379, password: bool = True) -> str:
    """The local Redis' URL on database ``db`` (see :func:`broker_url`)."""
    parts = urlsplit(_local().redis_url)
    user = unquote(parts.username or "")
    secret = quote(unquote(parts.password or ""), safe="")
    credentials = f"{user}:{secret}" if password else user
    return f"redis://{credentials}@127.0.0.1:{port}/{db}"


def password_files() -> dict[str, str]:
    """The password-file variables of the local servers, as absolute paths."""
    local = _local()
    return {
        "CV_BROKER_PASSWORD_FILE": str(local.resolve(Path(local.broker_password_file))),
        "CV_REDIS_PASSWORD_FILE": str(local.resolve(Path(local.redis_password_file))),
    }


def redis_client(db: int = 1) -> redis.Redis:
    return redis.Redis.from_url(redis_url(db), decode_responses=True)


def require_servers() -> None:
    """Fail (not skip) when RabbitMQ or Redis is down: these tests must run in CI."""
    problems = []
    try:
        redis.Redis.from_url(redis_url(0), socket_connect_timeout=2).ping()
    except (redis.RedisError, SettingsError) as exc:
        problems.append(f"Redis on 127.0.0.1:6379: {exc}")
    try:
        requests.get(f"{MANAGEMENT}/overview", auth=broker_auth(), timeout=3).raise_for_status()
    except (requests.RequestException, SettingsError) as exc:
        problems.append(f"RabbitMQ management on 127.0.0.1:15672: {exc}")
    if problems:
        raise RuntimeError(
            "these tests need the real servers; run `make test` (it starts them): "
            + "; ".join(problems)
        )


def delete_vhost(name: str) -> None:
    requests.delete(f"{MANAGEMENT}/vhosts/{name}", auth=broker_auth(), timeout=30)


def delete_prefix(client: redis.Redis, prefix: str, chunk: int = 5000) -> None:
    """Remove every key under ``prefix:`` (a benchmark's own), ``chunk`` keys a command."""
    keys = list(client.scan_iter(match=prefix + ":*", count=chunk))
    for start in range(0, len(keys), chunk):
        client.delete(*keys[start : start + chunk])


def fresh_vhost(name: str = VHOST) -> str:
    """An empty vhost (deleted and re-created, so no message of an earlier run remains)."""
    auth = broker_auth()
    requests.delete(f"{MANAGEMENT}/vhosts/{name}", auth=auth, timeout=10)
    requests.put(f"{MANAGEMENT}/vhosts/{name}", auth=auth, timeout=10).raise_for_status()
    requests.put(
        f"{MANAGEMENT}/permissions/{name}/{auth[0]}",
        json={"configure": ".*", "write": ".*", "read": ".*"},
        auth=auth,
        timeout=10,
    ).raise_for_status()
    return name


def stack_environment(tmp: Path, weights: Path, segment_weights: Path) -> dict[str, str]:
    env = {
        # Without passwords: the processes read the password files, as deployed.
        "CV_BROKER_URL": broker_url(VHOST, password=False),
        "CV_REDIS_URL": redis_url(1, password=False),
        **password_files(),
        "CV_REDIS_PREFIX": f"cvtest-{uuid.uuid4().hex[:8]}",
        "CV_STORAGE_DIR": str(tmp / "storage"),
        "CV_DETECT_WEIGHTS": str(weights),
        "CV_SEGMENT_WEIGHTS": str(segment_weights),
        # The SAM family's weights are looked for here: mobile_sam.pt alone (random).
        "CV_MODELS_DIR": str(tmp / "models"),
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
        # The test receivers listen on random ports.
        "CV_CALLBACK_PORTS": "*",
        # A revoked key must fail this soon (the tests wait for it).
        "CV_KEY_CACHE_SECONDS": "0.5",
        "CV_ULTRALYTICS_DIR": str(tmp / "ultralytics"),
        # Upkeep every 2 s, so the upkeep test sees it act within seconds.
        "CV_UPKEEP_SECONDS": str(UPKEEP_SECONDS),
        # Metrics: a scrape token, exporters on free ports (a demo stack may hold 9101-9104),
        # samples and job events under the test's folder.
        "CV_METRICS_TOKEN": METRICS_TOKEN,
        "CV_WORKER_METRICS_PORT": str(free_port_run(4)),
        "CV_METRICS_DIR": str(tmp / "metrics"),
        "CV_EVENT_LOG": str(tmp / "logs" / "events.jsonl"),
    }
    return env


def spawn(
    args: list[str], env: dict[str, str], log: Path, nice: int = 0
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
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


def start_worker(
    queue: str, env: dict[str, str], logs: Path, nice: int = 0
) -> subprocess.Popen[bytes]:
    """A prefork worker of one process on ``queue``; ``nice``: its CPU priority (higher:
    lower priority), as a host that keeps the API responsive would run its workers."""
    return spawn(
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
        nice,
    )


@contextmanager
def gunicorn(
    env: dict[str, str], logs: Path, ready_status: int = 200, workers: int = 1
) -> Iterator[str]:
    """The real API server (gunicorn + uvicorn worker) on a free port; yields its base URL.

    Waits until ``/health/ready`` answers ``ready_status`` (503 for a server whose
    RabbitMQ or Redis is deliberately unreachable).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = spawn(
        [
            str(VENV_BIN / "gunicorn"),
            "--no-control-socket",
            "-k",
            "api.server.ApiWorker",
            "-w",
            str(workers),
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
