"""Both pipelines through the real RabbitMQ, Redis and three worker processes.

The API runs in-process here (Starlette's test client); tests/e2e repeats the
main paths through a real gunicorn server.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from celery_worker.imaging import widen
from common.settings import Settings
from tests.support import stack
from tests.support.api import run_job, submit
from tests.support.catalogue import SHIPPED_PIPELINES
from tests.support.images import big_image
from tests.support.jobs import wait_for_job, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.workers]


def direct_predict(weights: Path, image: Path, **options: Any) -> Any:
    from ultralytics import YOLO

    return YOLO(str(weights)).predict(str(image), device="cpu", verbose=False, **options)[0]


@pytest.mark.parametrize("photo", ["bus.jpg", "zidane.jpg"])
@pytest.mark.parametrize(
    ("fields", "direct"),
    [
        ({}, {}),
        (
            {"confidence": 0.3, "iou": 0.5, "max_detections": 10},
            {"conf": 0.3, "iou": 0.5, "max_det": 10},
        ),
        (
            {"classes": "0,1,2,3,4,5,6,7,8,9,10", "image_size": 320},
            {"classes": list(range(11)), "imgsz": 320},
        ),
    ],
    ids=["defaults", "conf-iou-max", "classes-imgsz"],
)
def test_detect_equals_a_direct_ultralytics_call(
    api_client: Any,
    assets: Path,
    yolo_weights: Path,
    photo: str,
    fields: dict[str, Any],
    direct: dict[str, Any],
) -> None:
    job = run_job(api_client, assets / photo, {"pipeline": "detect", **fields})
    assert job["state"] == "succeeded", job["error"]
    result = api_client.get(f"/v1/jobs/{job['id']}/result").json()
    expected = direct_predict(yolo_weights, assets / photo, **direct)

    assert len(expected.boxes) > 0, "the test model must fire on this photo"
    detections = result["detections"]
    assert len(detections) == len(expected.boxes)
    np.testing.assert_allclose(
        [d["box"] for d in detections], expected.boxes.xyxy.numpy(), atol=2e-3
    )
    assert [d["class_id"] for d in detections] == expected.boxes.cls.int().tolist()
    assert [d["class_name"] for d in detections] == [
        expected.names[c] for c in expected.boxes.cls.int().tolist()
    ]
    np.testing.assert_allclose(
        [d["confidence"] for d in detections], expected.boxes.conf.numpy(), atol=1e-5
    )
    height, width = expected.orig_shape
    assert result["image"] == {"width": width, "height": height}
    assert (
        result["model"]["weights_sha256"] == hashlib.sha256(yolo_weights.read_bytes()).hexdigest()
    )
    assert result["model"]["name"] == "yolov8n"
    assert result["model"]["weights"] == str(yolo_weights)
    assert result["model"]["version"].startswith("ultralytics ")


def test_detect_writes_an_annotated_image(api_client: Any, assets: Path) -> None:
    job = run_job(api_client, assets / "bus.jpg", {"pipeline": "detect", "output_format": "png"})
    artifacts = job["links"]["artifacts"]
    assert [a["name"] for a in artifacts] == ["annotated.png"]
    response = api_client.get(artifacts[0]["href"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    annotated = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imread(str(assets / "bus.jpg"))
    assert annotated.shape == original.shape
    assert (annotated != original).any(axis=2).mean() > 0.01  # boxes were drawn
    assert [s["name"] for s in job["steps"]] == ["preprocess", "inference", "postprocess"]
    assert all(s["started_at"] and s["finished_at"] for s in job["steps"])


def test_blur_faces_hides_both_faces_and_nothing_else(api_client: Any, assets: Path) -> None:
    job = run_job(
        api_client, assets / "zidane.jpg", {"pipeline": "blur-faces", "output_format": "png"}
    )
    assert job["state"] == "succeeded", job["error"]
    result = api_client.get(f"/v1/jobs/{job['id']}/result").json()
    faces = result["detections"]
    assert len(faces) == 2, faces
    assert all(f["confidence"] >= 0.9 and f["class_name"] == "face" for f in faces)
    boxes = np.array([f["box"] for f in faces])
    # The two real faces in zidane.jpg (x ranges 560-670 and 910-1050).
    centres = sorted(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes)
    assert 560 < centres[0][0] < 670 and 910 < centres[1][0] < 1050

    response = api_client.get(f"/v1/jobs/{job['id']}/artifacts/blurred.png")
    blurred = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imread(str(assets / "zidane.jpg"))
    assert blurred.shape == original.shape
    for x1, y1, x2, y2 in boxes.astype(int):
        before = original[y1:y2, x1:x2].astype(float)
        after = blurred[y1:y2, x1:x2].astype(float)
        assert np.abs(after - before).mean() > 8, "face pixels must change"
        edges_before = cv2.Laplacian(before, cv2.CV_64F).var()
        assert cv2.Laplacian(after, cv2.CV_64F).var() < edges_before / 10, "face must be blurred"
    hidden = widen(boxes, result["options"]["margin"], original.shape[1], original.shape[0])
    outside = np.ones(original.shape[:2], bool)
    for x1, y1, x2, y2 in hidden:
        outside[max(int(y1) - 2, 0) : int(y2) + 3, max(int(x1) - 2, 0) : int(x2) + 3] = False
    assert outside.mean() > 0.8
    assert np.array_equal(blurred[outside], original[outside]), "pixels away from faces unchanged"


def test_pixelate_option(api_client: Any, assets: Path) -> None:
    job = run_job(
        api_client,
        assets / "zidane.jpg",
        {"pipeline": "blur-faces", "blur_method": "pixelate", "blur_strength": 90},
    )
    assert job["state"] == "succeeded"
    assert job["options"]["blur_method"] == "pixelate"
    assert job["links"]["artifacts"][0]["content_type"] == "image/jpeg"


def test_corrupt_image_fails_the_job_with_a_reason(
    api_client: Any, assets: Path, stack_settings: Settings
) -> None:
    data = (assets / "bus.jpg").read_bytes()
    job = run_job(api_client, data[: len(data) // 2], {"pipeline": "blur-faces"})
    assert job["state"] == "failed"
    assert job["error"]["step"] == "preprocess" and job["error"]["kind"] == "input"
    assert "corrupt or truncated" in job["error"]["detail"]
    assert job["links"]["result"] is None
    assert api_client.get(f"/v1/jobs/{job['id']}/result").status_code == 409
    # the upload is kept for inspection until the job expires or is deleted
    input_dir = (
        stack_settings.resolve(stack_settings.storage_dir) / "tenants" / "acme" / "jobs" / job["id"]
    )
    assert any(p.name.startswith("input") for p in input_dir.iterdir())


def test_catalogue_and_readiness_show_the_workers_models(api_client: Any) -> None:
    pipelines = {p["name"]: p for p in api_client.get("/v1/pipelines").json()["pipelines"]}
    assert set(pipelines) == SHIPPED_PIPELINES
    for pipeline in pipelines.values():
        assert pipeline["available"] is True and pipeline["unavailable_reason"] is None
        assert [s["queue"] for s in pipeline["steps"]] == ["preprocess", "inference", "postprocess"]
    defaults = {o["name"]: o["default"] for o in pipelines["detect"]["options"]}
    assert defaults["confidence"] == 0.25 and defaults["image_size"] == 640
    ready = api_client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["workers"][0]["models"]["yolov8n"]["available"] is True


def test_cancel_queued_and_running_jobs(
    api_client: Any, assets: Path, stack_settings: Settings
) -> None:
    slow = {"pipeline": "detect", "image_size": 2048}
    first = submit(api_client, big_image(assets), slow).json()["id"]
    second = submit(api_client, big_image(assets), slow).json()["id"]
    get = lambda job_id: api_client.get(f"/v1/jobs/{job_id}").json()  # noqa: E731
    wait_until(lambda: get(first)["step"] == "inference", 60, "the first job's inference")
    storage = stack_settings.resolve(stack_settings.storage_dir) / "tenants" / "acme" / "jobs"

    assert get(second)["state"] in ("queued", "running")
    assert api_client.delete(f"/v1/jobs/{second}").status_code == 204
    assert api_client.delete(f"/v1/jobs/{first}").status_code == 204
    for job_id in (first, second):
        assert get(job_id)["state"] == "cancelled"
        # The API removed its files; a step in flight that wrote one meanwhile (the second
        # job's preprocess) removes it as it ends, finding the job cancelled.
        gone = lambda job_id=job_id: not (storage / job_id).exists()  # noqa: E731
        wait_until(gone, 60, f"the files of cancelled job {job_id} to be removed")

    # A later job passing through the same single inference worker proves both are behind us.
    after = run_job(api_client, assets / "zidane.jpg", {"pipeline": "blur-faces"})
    assert after["state"] == "succeeded"
    for job_id in (first, second):
        job = get(job_id)
        assert job["state"] == "cancelled"
        steps = {s["name"]: s for s in job["steps"]}
        assert steps["postprocess"]["started_at"] is None
        assert not (storage / job_id).exists()
        assert api_client.get(f"/v1/jobs/{job_id}/result").status_code == 409
    # No step of the second job began after it was cancelled (its inference may have begun
    # before, in the first job's batch, when both were queued for it).
    second_job = get(second)
    began = {s["name"]: s for s in second_job["steps"]}["inference"]["started_at"]
    assert began is None or began <= second_job["finished_at"], second_job


def test_delete_a_finished_job_removes_record_and_files(
    api_client: Any, assets: Path, stack_settings: Settings
) -> None:
    job = run_job(api_client, assets / "zidane.jpg", {"pipeline": "blur-faces"})
    files = (
        stack_settings.resolve(stack_settings.storage_dir) / "tenants" / "acme" / "jobs" / job["id"]
    )
    assert files.exists()
    assert api_client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert api_client.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert api_client.get(job["links"]["artifacts"][0]["href"]).status_code == 404
    assert not files.exists()
    assert api_client.delete(f"/v1/jobs/{job['id']}").status_code == 404


def test_list_jobs(api_client: Any, assets: Path) -> None:
    data = (assets / "bus.jpg").read_bytes()
    failed_id = run_job(api_client, data[: len(data) // 2], {"pipeline": "blur-faces"})["id"]
    ids = [
        run_job(api_client, assets / "zidane.jpg", {"pipeline": "blur-faces"})["id"]
        for _ in range(2)
    ]
    page = api_client.get("/v1/jobs?limit=2").json()
    assert [j["id"] for j in page["items"]] == ids[::-1]
    assert page["total"] >= 3 and page["next"] == "/v1/jobs?limit=2&offset=2"
    failed = api_client.get("/v1/jobs?state=failed&limit=200").json()["items"]
    assert failed_id in [j["id"] for j in failed]
    assert all(j["state"] == "failed" for j in failed)
    succeeded = api_client.get("/v1/jobs?state=succeeded&limit=200").json()["items"]
    assert set(ids) <= {j["id"] for j in succeeded} and failed_id not in {
        j["id"] for j in succeeded
    }
    assert api_client.get("/v1/jobs?state=bogus").status_code == 400


def test_a_worker_killed_mid_step_loses_no_job(
    api_client: Any, assets: Path, workers: dict[str, Any]
) -> None:
    """kill -9 of the inference process: RabbitMQ redelivers the step and the job completes."""

    response = submit(api_client, big_image(assets), {"pipeline": "detect", "image_size": 2048})
    job_id = response.json()["id"]
    get = lambda: api_client.get(f"/v1/jobs/{job_id}").json()  # noqa: E731
    wait_until(lambda: get()["step"] == "inference", 60, "inference to start")
    stack.kill_pool(workers["inference"])
    job = wait_for_job(lambda _: get(), job_id, timeout=120)
    assert job["state"] == "succeeded", job["error"]
    result = api_client.get(f"/v1/jobs/{job_id}/result").json()
    assert result["image"] == {"width": 2048, "height": 2730}
