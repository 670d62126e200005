"""The image postprocess steps' bounds: crop files per job, and the result's size.

The steps are called as plain functions on a context of real settings and storage
and a job store that records the success it is asked to store.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from celery_worker.artifacts import refuse_large_result
from celery_worker.errors import InputError
from celery_worker.tasks.postprocess import postprocess_crops, postprocess_detect
from common.settings import Settings
from common.storage import Storage


@dataclass
class Jobs:
    succeeded: list[dict[str, Any]] = field(default_factory=list)

    def succeed(self, job_id: str, step: str, result: dict[str, Any], written: Any) -> bool:
        self.succeeded.append(result)
        return True


@dataclass
class Store:
    jobs: Jobs = field(default_factory=Jobs)


@dataclass
class Context:
    settings: Settings
    storage: Storage
    store: Store = field(default_factory=Store)


def context(tmp_path: Path, **settings: Any) -> Any:
    return Context(replace(Settings(), **settings), Storage(tmp_path))


def detection(index: int, confidence: float) -> dict[str, Any]:
    x = 10.0 * index
    return {
        "box": [x, 10.0, x + 8.0, 30.0],
        "confidence": confidence,
        "class_id": 0,
        "class_name": "person",
    }


def payload(ctx: Any, detections: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    job_id = uuid.uuid4().hex
    key = ctx.storage.key("default", job_id, "input.png")
    ok, data = cv2.imencode(".png", np.full((48, 4000, 3), 128, np.uint8))
    assert ok
    ctx.storage.write_bytes(key, data.tobytes())
    return {
        "job_id": job_id,
        "tenant": "default",
        "priority": "normal",
        "pipeline": "detect-crops",
        "model_name": "yolov8n",
        "options": {
            "margin": 0.0,
            "output_format": "png",
            "draw_labels": True,
            "confidence": 0.25,
            "max_detections": 300,
            **options,
        },
        "input_key": key,
        "image": {"width": 4000, "height": 48},
        "detections": detections,
        "model": {"name": "yolov8n"},
    }


def artifact_names(ctx: Any, job: dict[str, Any]) -> list[str]:
    folder = ctx.storage.job_dir("default", job["job_id"]) / "artifacts"
    return sorted(p.name for p in folder.iterdir())


# --- crops ------------------------------------------------------------------------------


def test_crops_are_capped_at_the_most_confident_and_say_so(tmp_path: Path) -> None:
    ctx = context(tmp_path, max_crops=2)
    found = [detection(i, c) for i, c in enumerate([0.3, 0.9, 0.5, 0.8, 0.1])]
    job = payload(ctx, found)

    postprocess_crops(ctx, job)

    [result] = ctx.store.jobs.succeeded
    assert result["crops"] == {"written": 2, "detections": 5, "limit": 2, "truncated": True}
    assert [d.get("crop") for d in result["detections"]] == [
        None,
        "crop-0002-person.png",
        None,
        "crop-0004-person.png",
        None,
    ]
    assert artifact_names(ctx, job) == [
        "crop-0002-person.png",
        "crop-0004-person.png",
        "crops.json",
    ]
    manifest = json.loads(
        ctx.storage.artifact_path("default", job["job_id"], "crops.json").read_text()
    )
    assert manifest["truncated"] is True and manifest["limit"] == 2
    assert [c["file"] for c in manifest["crops"]] == [
        "crop-0002-person.png",
        "crop-0004-person.png",
    ]


def test_an_image_of_300_detections_writes_max_crops_files(tmp_path: Path) -> None:
    ctx = context(tmp_path)  # max_crops 100
    job = payload(ctx, [detection(i, 0.5 + i / 1000) for i in range(300)])

    postprocess_crops(ctx, job)

    crops = [n for n in artifact_names(ctx, job) if n.startswith("crop-")]
    assert len(crops) == 100
    assert crops[0] == "crop-0201-person.png"  # the 100 most confident: the last 100
    assert ctx.store.jobs.succeeded[0]["crops"]["truncated"] is True


def test_under_the_cap_every_detection_gets_its_crop(tmp_path: Path) -> None:
    ctx = context(tmp_path, max_crops=3)
    found = [detection(0, 0.9), detection(1, 0.8), {**detection(2, 0.95), "box": [5, 5, 5, 5]}]
    job = payload(ctx, found)  # the third is empty: nothing to crop, not a truncation

    postprocess_crops(ctx, job)

    [result] = ctx.store.jobs.succeeded
    assert result["crops"] == {"written": 2, "detections": 3, "limit": 3, "truncated": False}
    assert "crop" not in result["detections"][2]


# --- the result's size ------------------------------------------------------------------


def test_a_result_over_the_limit_fails_the_job_and_stores_nothing(tmp_path: Path) -> None:
    ctx = context(tmp_path, max_result_bytes=20_000)
    job = payload(ctx, [detection(i % 390, 0.5) for i in range(300)], confidence=0.25)

    with pytest.raises(InputError) as caught:
        postprocess_detect(ctx, job)

    message = str(caught.value)
    assert caught.value.kind == "input"
    assert "over the limit of 20000 bytes (CV_MAX_RESULT_BYTES)" in message
    assert "a higher confidence (this job: 0.25)" in message
    assert "a lower max_detections (this job: 300)" in message
    assert ctx.store.jobs.succeeded == []


def test_a_result_within_the_limit_is_stored(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    job = payload(ctx, [detection(i, 0.5) for i in range(300)])
    postprocess_detect(ctx, job)
    [result] = ctx.store.jobs.succeeded
    assert len(result["detections"]) == 300


def test_rle_masks_are_the_first_remedy_named() -> None:
    result = {"options": {"rle": True, "confidence": 0.25}, "detections": [{"rle": [0] * 500}]}
    size = len(json.dumps(result))
    refuse_large_result(result, size)  # at the limit: kept
    with pytest.raises(InputError, match=r"rle=false \(masks as polygons only\), or a higher"):
        refuse_large_result(result, size - 1)
    with pytest.raises(InputError, match=f"would be {size} bytes of JSON"):
        refuse_large_result(result, size - 1)


# --- working files ----------------------------------------------------------------------


def test_the_steps_working_files_go_once_the_job_has_succeeded(tmp_path: Path) -> None:
    """The model input (and a segment job's masks) are not kept until the job expires."""
    ctx = context(tmp_path)
    job = payload(ctx, [])
    work = ctx.storage.job_dir("default", job["job_id"]) / "work"
    work.mkdir(parents=True)
    np.save(work / "model-input.npy", np.zeros((4, 4, 3), np.uint8))

    postprocess_detect(ctx, job)

    assert ctx.store.jobs.succeeded and not work.exists()
    assert ctx.storage.artifact_path("default", job["job_id"], "annotated.png").is_file()
