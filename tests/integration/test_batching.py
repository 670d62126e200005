"""Batching across requests on the real stack: parity with unbatched runs, and kill -9.

To make a batch for sure, a slow job (a 2048 px detect) holds the inference worker while
the jobs under test are preprocessed and queued behind it; the worker's next step then
takes them together (the stack's yolov8n and yolo11n-seg have max_batch 8).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import stack
from tests.support.api import submit
from tests.support.images import big_image
from tests.support.jobs import wait_for_job, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.workers]

# (photo, pipeline, options): two sizes, two pipelines (a segment job between detect jobs
# runs alone, after their batch, in the same process), three sets of options.
MIXED = [
    ("zidane.jpg", "detect", {}),
    ("bus.jpg", "detect", {}),
    ("zidane.jpg", "detect", {"confidence": 0.5, "max_detections": 5}),
    ("bus.jpg", "segment", {}),
    ("bus.jpg", "detect", {"image_size": 320}),
    ("zidane.jpg", "detect", {}),
    ("bus.jpg", "detect", {"confidence": 0.5, "max_detections": 5}),
    ("zidane.jpg", "detect", {"image_size": 320}),
]


def hold_inference(client: Any, assets: Path) -> str:
    """A detect job slow enough (seconds) for the next ones to queue behind it."""
    response = submit(client, big_image(assets), {"pipeline": "detect", "image_size": 2048})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    get = lambda: client.get(f"/v1/jobs/{job_id}").json()  # noqa: E731
    wait_until(lambda: get()["step"] == "inference", 60, "the slow job to reach inference")
    return job_id


def submit_all(client: Any, assets: Path, jobs: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    ids = []
    for photo, pipeline, options in jobs:
        response = submit(client, assets / photo, {"pipeline": pipeline, **options})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def finished(client: Any, job_id: str, timeout: float = 120) -> dict[str, Any]:
    job = wait_for_job(lambda j: client.get(f"/v1/jobs/{j}").json(), job_id, timeout)
    assert job["state"] == "succeeded", job["error"]
    result: dict[str, Any] = client.get(f"/v1/jobs/{job_id}/result").json()
    return result


def test_batched_results_equal_unbatched_ones(api_client: Any, assets: Path) -> None:
    """Mixed sizes, options and pipelines queued together: the detect jobs share forward
    passes, and every result is exactly what the same job gets alone."""
    blocker = hold_inference(api_client, assets)
    batched_ids = submit_all(api_client, assets, MIXED)
    finished(api_client, blocker)
    batched = [finished(api_client, job_id) for job_id in batched_ids]
    sizes = [r["timings"]["inference_batch"] for r in batched if r["pipeline"] == "detect"]
    assert max(sizes) >= 3, sizes  # the detect jobs queued behind the blocker went together
    for result in batched:
        assert 0 <= result["timings"]["inference_wait"] < 5
    alone = []
    for job in MIXED:  # one at a time: each alone on the worker
        (job_id,) = submit_all(api_client, assets, [job])
        alone.append(finished(api_client, job_id))
    assert all(r["timings"]["inference_batch"] == 1 for r in alone)
    for (photo, pipeline, options), one, other in zip(MIXED, batched, alone, strict=True):
        assert one["image"] == other["image"]
        assert one["detections"] == other["detections"], (photo, pipeline, options)
    found = [len(r["detections"]) for r in batched]
    assert sum(map(bool, found)) >= 6, found  # real boxes compared, not empty lists


def test_a_worker_killed_mid_batch_loses_nothing_and_ends_each_job_once(
    api_client: Any,
    assets: Path,
    workers: dict[str, Any],
    stack_store: Any,
    stack_env: dict[str, str],
) -> None:
    """kill -9 of the inference process while it runs a batch: Celery's message comes back
    through task_reject_on_worker_lost, the ones the batch took itself through RabbitMQ
    (the dead process's connection closed unacknowledged); each job succeeds, once."""
    blocker = hold_inference(api_client, assets)
    big = big_image(assets)
    ids = []
    for _ in range(4):  # seconds each at 2048 px: the batch runs long enough to be killed
        response = submit(api_client, big, {"pipeline": "detect", "image_size": 2048})
        ids.append(response.json()["id"])
    finished(api_client, blocker)

    def in_batch() -> bool:
        jobs = [api_client.get(f"/v1/jobs/{j}").json() for j in ids]
        return sum(j["step"] == "inference" and j["state"] == "running" for j in jobs) >= 2

    wait_until(in_batch, 60, "a batch of the big jobs to start")
    taken = [j for j in ids if api_client.get(f"/v1/jobs/{j}").json()["step"] == "inference"]
    stack.kill_pool(workers["inference"])
    results = [finished(api_client, job_id, timeout=240) for job_id in ids]
    assert all(r["image"] == {"width": 2048, "height": 2730} for r in results)
    for job_id in ids:
        count = stack_store.redis.hget(stack_store.keys.job(job_id), "redeliveries:inference")
        # Started in the killed batch: delivered again once. Still queued then: never.
        assert int(count or 0) == (1 if job_id in taken else 0), (job_id, count)
    events = [json.loads(line) for line in Path(stack_env["CV_EVENT_LOG"]).read_text().splitlines()]
    for job_id in ids:
        ends = [e for e in events if e.get("event") == "job.finished" and e.get("job_id") == job_id]
        assert [e["outcome"] for e in ends] == ["succeeded"], ends
