"""New weights + a worker restart: queued jobs wait in RabbitMQ and run on the new model."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from common.jobstore import JobStore
from common.settings import Settings
from tests.support import stack
from tests.support.api import submit
from tests.support.jobs import wait_for_job, wait_until
from tests.support.yolo import build_firing_yolo

pytestmark = [pytest.mark.broker, pytest.mark.workers]


def test_replaced_weights_are_used_after_a_restart_and_no_queued_job_is_lost(
    api_client: Any,
    assets: Path,
    workers: dict[str, Any],
    yolo_weights: Path,
    stack_env: dict[str, str],
    stack_dir: Path,
    stack_settings: Settings,
) -> None:
    store = JobStore.from_url(stack_settings.redis_url, stack_settings.redis_prefix, 60)
    stack.stop(workers["inference"])  # warm shutdown: a running task would finish first
    wait_until(lambda: not store.workers.alive(), 30, "the stopped worker's report to go")
    ids = [
        submit(api_client, assets / "zidane.jpg", {"pipeline": "detect"}).json()["id"]
        for _ in range(3)
    ]
    wait_until(
        lambda: all(api_client.get(f"/v1/jobs/{i}").json()["steps"][0]["finished_at"] for i in ids),
        30,
        "the jobs to wait for inference",
    )
    original = yolo_weights.read_bytes()
    replacement = stack_dir / "replacement.pt"
    build_firing_yolo(replacement, [assets / "bus.jpg"], bias=-1.0)
    shutil.copyfile(replacement, yolo_weights)
    new_sha = hashlib.sha256(yolo_weights.read_bytes()).hexdigest()
    assert new_sha != hashlib.sha256(original).hexdigest()
    try:
        workers["inference"] = stack.start_worker("inference", stack_env, stack_dir / "logs")
        for job_id in ids:
            job = wait_for_job(lambda j: api_client.get(f"/v1/jobs/{j}").json(), job_id, 120)
            assert job["state"] == "succeeded", job["error"]
            result = api_client.get(f"/v1/jobs/{job_id}/result").json()
            assert result["model"]["weights_sha256"] == new_sha
    finally:
        yolo_weights.write_bytes(original)
        stack.stop(workers["inference"])
        workers["inference"] = stack.start_worker("inference", stack_env, stack_dir / "logs")
        wait_until(
            lambda: any(
                m.get("weights_sha256") == hashlib.sha256(original).hexdigest()
                for r in store.workers.alive()
                for m in r["models"].values()
            ),
            120,
            "the inference worker to reload the original weights",
        )
