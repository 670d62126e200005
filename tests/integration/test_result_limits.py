"""Heavy results through the real stack: crop files capped, an oversized result refused.

The postprocess worker is swapped for one with small limits (CV_MAX_CROPS,
CV_MAX_RESULT_BYTES) for this module, and the usual one put back after it. The test
model finds 40 masks in bus.jpg: about 1.2 MB of result as polygons, 1.8 MB with RLE
as well, so a limit of 1.5 MB sits between the two.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.settings import Settings
from common.storage import Storage
from tests.support import stack
from tests.support.api import run_job
from tests.support.jobs import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.workers]

MAX_CROPS = 5
MAX_RESULT_BYTES = 1_500_000


@pytest.fixture(scope="module", autouse=True)
def limited_postprocess(
    workers: dict[str, subprocess.Popen[bytes]], stack_env: dict[str, str], stack_dir: Path
) -> Iterator[None]:
    limits = {"CV_MAX_CROPS": str(MAX_CROPS), "CV_MAX_RESULT_BYTES": str(MAX_RESULT_BYTES)}
    logs = stack_dir / "logs"
    stack.stop(workers["postprocess"])
    workers["postprocess"] = stack.start_worker("postprocess", {**stack_env, **limits}, logs)
    try:
        yield
    finally:
        stack.stop(workers["postprocess"])
        workers["postprocess"] = stack.start_worker("postprocess", stack_env, logs)


def test_detect_crops_writes_the_most_confident_max_crops(api_client: Any, assets: Path) -> None:
    job = run_job(api_client, assets / "bus.jpg", {"pipeline": "detect-crops"})
    assert job["state"] == "succeeded", job["error"]
    result = api_client.get(f"/v1/jobs/{job['id']}/result").json()
    detections = result["detections"]
    assert len(detections) > MAX_CROPS
    summary = {"written": MAX_CROPS, "detections": len(detections), "limit": MAX_CROPS}
    assert result["crops"] == {**summary, "truncated": True}
    cropped = [d for d in detections if "crop" in d]
    assert len(cropped) == MAX_CROPS
    assert min(d["confidence"] for d in cropped) >= max(
        d["confidence"] for d in detections if "crop" not in d
    )
    names = {a["name"] for a in result["artifacts"]}
    assert names == {"crops.json", *(d["crop"] for d in cropped)}
    manifest = api_client.get(f"/v1/jobs/{job['id']}/artifacts/crops.json").json()
    assert manifest["truncated"] is True and len(manifest["crops"]) == MAX_CROPS


def test_segment_with_rle_past_the_result_limit_fails_as_input(
    api_client: Any, assets: Path, stack_settings: Settings
) -> None:
    fields = {"pipeline": "segment", "max_detections": 40, "output_format": "png"}
    job = run_job(api_client, assets / "bus.jpg", {**fields, "rle": True})
    assert job["state"] == "failed"
    error = job["error"]
    assert error["kind"] == "input" and error["step"] == "postprocess"
    assert f"over the limit of {MAX_RESULT_BYTES} bytes (CV_MAX_RESULT_BYTES)" in error["detail"]
    assert "rle=false" in error["detail"]
    assert api_client.get(f"/v1/jobs/{job['id']}/result").status_code == 409
    storage = Storage(stack_settings.resolve(stack_settings.storage_dir))
    made = storage.job_dir(job["tenant"], job["id"]) / "artifacts"
    wait_until(lambda: not made.exists(), 10, "the overlay and label map to be removed")

    # As the message suggests: without RLE it fits.
    job = run_job(api_client, assets / "bus.jpg", {**fields, "rle": False})
    assert job["state"] == "succeeded", job["error"]
    result = api_client.get(f"/v1/jobs/{job['id']}/result")
    assert len(json.dumps(result.json())) <= MAX_RESULT_BYTES
