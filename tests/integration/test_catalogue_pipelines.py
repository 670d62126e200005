"""detect-crops, redact, the models endpoint, and a pipeline added by configuration alone."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from common.settings import Settings
from tests.support.api import run_job
from tests.support.keys import StackKeys, headers

pytestmark = [pytest.mark.broker, pytest.mark.workers]


def decode(content: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)


def test_detect_crops_writes_one_image_per_detection_and_a_manifest(
    api_client: Any, assets: Path
) -> None:
    job = run_job(
        api_client,
        assets / "zidane.jpg",
        {
            "pipeline": "detect-crops",
            "classes": "0,1,2,3,4,5",
            "max_detections": 12,
            "margin": 0.1,
            "output_format": "png",
        },
    )
    assert job["state"] == "succeeded", job["error"]
    result = api_client.get(f"/v1/jobs/{job['id']}/result").json()
    detections = result["detections"]
    assert 0 < len(detections) <= 12 and all(d["class_id"] <= 5 for d in detections)
    manifest = api_client.get(f"/v1/jobs/{job['id']}/artifacts/crops.json")
    assert manifest.headers["content-type"] == "application/json"
    crops = manifest.json()["crops"]
    assert [c["file"] for c in crops] == [d["crop"] for d in detections]
    original = cv2.imread(str(assets / "zidane.jpg"))
    for crop in crops[:5]:
        x1, y1, x2, y2 = crop["crop_box"]
        picture = decode(api_client.get(f"/v1/jobs/{job['id']}/artifacts/{crop['file']}").content)
        assert np.array_equal(picture, original[y1:y2, x1:x2])  # png: the exact pixels
        bx1, by1, bx2, by2 = crop["box"]
        assert x1 <= bx1 and y1 <= by1 and x2 >= bx2 and y2 >= by2  # widened by the margin


def test_redact_hides_the_chosen_classes_only(api_client: Any, assets: Path) -> None:
    job = run_job(
        api_client,
        assets / "bus.jpg",
        {
            "pipeline": "redact",
            "classes": "4",
            "max_detections": 5,
            "output_format": "png",
            "margin": 0,
        },
    )
    assert job["state"] == "succeeded", job["error"]
    assert job["options"]["blur_method"] == "pixelate"  # the pipeline file's default
    result = api_client.get(f"/v1/jobs/{job['id']}/result").json()
    boxes = [d["box"] for d in result["detections"]]
    assert boxes and all(d["class_id"] == 4 for d in result["detections"])
    redacted = decode(api_client.get(f"/v1/jobs/{job['id']}/artifacts/redacted.png").content)
    original = cv2.imread(str(assets / "bus.jpg"))
    outside = np.ones(original.shape[:2], bool)
    for x1, y1, x2, y2 in boxes:
        outside[int(y1) : int(np.ceil(y2)) + 1, int(x1) : int(np.ceil(x2)) + 1] = False
        inside = (slice(int(np.ceil(y1)), int(y2)), slice(int(np.ceil(x1)), int(x2)))
        assert np.abs(redacted[inside].astype(int) - original[inside]).mean() > 3
    assert np.array_equal(redacted[outside], original[outside])


def test_models_endpoint_reports_what_the_workers_loaded(
    api_client: Any, yolo_weights: Path, yolo_seg_weights: Path, sam_weights: Path
) -> None:
    models = {m["name"]: m for m in api_client.get("/v1/models").json()["models"]}
    sam = {"sam-b", "sam-l", "sam-h", "sam2-t", "sam2-s", "sam2-b", "sam2-l"}
    assert set(models) == {"yolov8n", "yolo11n-seg", "mtcnn", "mobile-sam"} | sam
    for name in sam:  # listed, with why not, until their weights are there
        assert models[name]["task"] == "sam" and not models[name]["available"]
        assert "no weights file" in models[name]["unavailable_reason"], models[name]
    mobile = models["mobile-sam"]  # the stack's random weights
    assert mobile["available"] and mobile["task"] == "sam", mobile
    assert mobile["weights_sha256"] == hashlib.sha256(sam_weights.read_bytes()).hexdigest()
    detect = models["yolov8n"]
    assert detect["available"] and detect["task"] == "detect" and detect["format"] == "pt"
    assert detect["weights_sha256"] == hashlib.sha256(yolo_weights.read_bytes()).hexdigest()
    assert detect["weights_bytes"] == yolo_weights.stat().st_size
    assert len(detect["classes"]) == 80 and detect["workers"]
    assert models["yolo11n-seg"]["weights"] == str(yolo_seg_weights)
    assert models["mtcnn"]["task"] == "faces" and models["mtcnn"]["available"]


def test_a_pipeline_added_to_the_pipelines_file_runs_without_code(
    stack_settings: Settings, workers: Any, assets: Path, tmp_path: Path, keys: StackKeys
) -> None:
    """Copy the shipped file, add a pipeline reusing existing steps, start an API on it."""
    from api.app import create_app

    shipped = stack_settings.resolve(stack_settings.pipelines_file).read_text()
    added = shipped + (
        "\n  faces-pixelated:\n"
        "    description: Every face pixelated hard, as PNG.\n"
        "    model: mtcnn\n"
        "    steps: [preprocess.image, inference.faces, postprocess.blur-faces]\n"
        "    defaults: {blur_method: pixelate, blur_strength: 95, output_format: png}\n"
    )
    (tmp_path / "pipelines.yaml").write_text(added)
    client = create_app(
        replace(stack_settings, pipelines_file=tmp_path / "pipelines.yaml"),
    ).test_client(base_url="http://localhost")
    client.headers.update(headers(keys.acme))
    listed = {p["name"]: p for p in client.get("/v1/pipelines").json()["pipelines"]}
    assert listed["faces-pixelated"]["available"] is True
    defaults = {o["name"]: o["default"] for o in listed["faces-pixelated"]["options"]}
    assert defaults["blur_method"] == "pixelate" and defaults["blur_strength"] == 95
    job = run_job(client, assets / "zidane.jpg", {"pipeline": "faces-pixelated"})
    assert job["state"] == "succeeded", job["error"]
    assert [a["name"] for a in job["links"]["artifacts"]] == ["blurred.png"]
    assert len(client.get(f"/v1/jobs/{job['id']}/result").json()["detections"]) == 2
    assert json.loads(json.dumps(job["options"]))["blur_strength"] == 95
