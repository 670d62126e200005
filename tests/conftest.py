"""Fixtures: tiny unit-test apps, and the real stack (RabbitMQ, Redis, workers, gunicorn).

The real-stack fixtures are session-scoped and start only when a test asks for
them; every process they start is stopped at the end of the session.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_worker.models import configure_ultralytics
from celery_worker.samples import ultralytics_assets
from common.contract import QUEUES
from common.settings import Settings
from tests.support import stack
from tests.support.api import offline_app
from tests.support.jobs import wait_until
from tests.support.keys import StackKeys, headers, make_stack_keys

UNREACHABLE = {
    "CV_BROKER_URL": "amqp://cvjobs@127.0.0.1:1//",
    "CV_REDIS_URL": "redis://127.0.0.1:1/0",
    "CV_PUBLISH_TIMEOUT_SECONDS": "0.5",
}
NO_ENV_FILE = Path("/nonexistent/.env")

# Before anything imports ultralytics: no network look-ups, no pip installs from tests.
configure_ultralytics(Settings().resolve(Settings().ultralytics_dir))


@pytest.fixture(scope="session")
def assets() -> Path:
    """Real photos shipped inside the ultralytics wheel (found without importing it)."""
    return ultralytics_assets()


@pytest.fixture
def offline_settings(tmp_path: Path) -> Settings:
    """Settings whose RabbitMQ and Redis do not answer (port 1)."""
    env = {**UNREACHABLE, "CV_STORAGE_DIR": str(tmp_path / "storage")}
    return Settings.from_env(env, env_file=NO_ENV_FILE)


@pytest.fixture
def offline_client(offline_settings: Settings) -> Any:
    """The API with Redis and RabbitMQ down, a member key of a key table in memory."""
    return offline_app(offline_settings)


# --- the real stack ---------------------------------------------------------------


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def yolo_weights(stack_dir: Path, assets: Path) -> Path:
    from tests.support.yolo import build_firing_yolo

    return build_firing_yolo(
        stack_dir / "models" / "yolov8n-test.pt", [assets / "bus.jpg", assets / "zidane.jpg"]
    )


@pytest.fixture(scope="session")
def yolo_seg_weights(stack_dir: Path, assets: Path) -> Path:
    from tests.support.yolo import build_firing_yolo

    return build_firing_yolo(
        stack_dir / "models" / "yolo11n-seg-test.pt",
        [assets / "bus.jpg", assets / "zidane.jpg"],
        arch="yolo11n-seg.yaml",
    )


@pytest.fixture(scope="session")
def sam_weights(stack_dir: Path) -> Path:
    """Random MobileSAM weights (their masks kept: tests.support.sam) where the stack's
    catalogue looks for mobile-sam; the other SAM models have none."""
    from tests.support.sam import build_scoring_sam

    return build_scoring_sam(stack_dir / "models" / "mobile_sam.pt")


@pytest.fixture(scope="session")
def stack_env(
    stack_dir: Path, yolo_weights: Path, yolo_seg_weights: Path, sam_weights: Path
) -> Iterator[dict[str, str]]:
    stack.require_servers()
    stack.fresh_vhost()
    env = stack.stack_environment(stack_dir, yolo_weights, yolo_seg_weights)
    yield env
    client = stack.redis_client(1)
    keys = list(client.scan_iter(match=env["CV_REDIS_PREFIX"] + ":*"))
    if keys:
        client.delete(*keys)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test that ran on the real workers shows their recent errors in its report
    (a worker that loops or dies shows nowhere else once the temporary folder is gone)."""
    report = yield
    stack_dir = getattr(item, "funcargs", {}).get("stack_dir")
    if report.failed and stack_dir is not None and "workers" in item.fixturenames:
        lines = []
        for log in sorted((stack_dir / "logs").glob("worker-*.log")):
            tail = log.read_text(errors="replace").splitlines()[-400:]
            errors = [line[:300] for line in tail if "ERROR" in line or "CRITICAL" in line]
            lines += [f"{log.name}: {line}" for line in errors[-15:]]
        report.sections.append(("worker errors", "\n".join(lines) or "(none)"))
    return report


@pytest.fixture(scope="session")
def stack_settings(stack_env: dict[str, str]) -> Settings:
    return Settings.from_env(stack_env, env_file=NO_ENV_FILE)


@pytest.fixture(scope="session")
def workers(
    stack_env: dict[str, str], stack_settings: Settings, stack_dir: Path
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """One real Celery worker per queue; ready once the inference one reports its models
    (those the stack has weights for: of the SAM family only mobile-sam's, random)."""
    from common.catalogue import load_catalogue
    from common.jobstore import JobStore

    models = load_catalogue(stack_settings).models
    provided = {n for n, m in models.items() if m.weights is None or m.weights.is_file()}

    logs = stack_dir / "logs"
    logs.mkdir(exist_ok=True)
    processes = {q: stack.start_worker(q, stack_env, logs) for q in QUEUES}
    store = JobStore.from_url(stack_settings.redis_url, stack_settings.redis_prefix, 60)
    try:

        def ready() -> bool:
            for queue, process in processes.items():
                if process.poll() is not None:
                    log = (logs / f"worker-{queue}.log").read_text()[-3000:]
                    raise RuntimeError(f"worker {queue} exited: {log}")
            reports = store.workers.alive()
            return bool(reports) and all(
                r["models"].get(name, {}).get("available") for r in reports for name in provided
            )

        wait_until(ready, 120, "the inference worker to load its models")
        yield processes
    finally:
        for process in processes.values():
            stack.stop(process)


@pytest.fixture(scope="session")
def stack_store(stack_settings: Settings) -> Any:
    from common.jobstore import JobStore

    s = stack_settings
    return JobStore.from_url(s.redis_url, s.redis_prefix, s.job_ttl_seconds)


@pytest.fixture(scope="session")
def keys(stack_store: Any) -> StackKeys:
    """Real keys in the stack's Redis: members of acme and globex, a reader, an admin."""
    return make_stack_keys(stack_store)


@pytest.fixture(scope="session")
def stack_app(stack_settings: Settings, workers: Any) -> Any:
    from api.app import create_app

    return create_app(stack_settings)


@pytest.fixture(scope="session")
def api_client(stack_app: Any, keys: StackKeys) -> Any:
    """The API in-process (Starlette test client) against the real RabbitMQ, Redis and
    workers, as a member of tenant acme."""
    client = stack_app.test_client(base_url="http://localhost")
    client.headers.update(headers(keys.acme))
    return client


@pytest.fixture
def client_as(stack_app: Any, keys: StackKeys) -> Any:
    """``client_as("globex")``: a client of the same app with another of ``keys``."""

    def make(label: str | None) -> Any:
        client = stack_app.test_client(base_url="http://localhost")
        if label is not None:
            client.headers.update(headers(getattr(keys, label)))
        return client

    return make


@pytest.fixture(scope="session")
def http_api(stack_env: dict[str, str], workers: Any, stack_dir: Path) -> Iterator[str]:
    """Base URL of a real gunicorn server in front of the same stack."""
    logs = stack_dir / "logs"
    logs.mkdir(exist_ok=True)
    with stack.gunicorn(stack_env, logs) as base:
        yield base


@pytest.fixture(scope="session")
def http(keys: StackKeys) -> Iterator[Any]:
    """A requests session sending acme's member key."""
    import requests

    with requests.Session() as session:
        session.headers.update(headers(keys.acme))
        yield session
