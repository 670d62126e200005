"""ONNX export: the exported model through the service's square letterbox gives the boxes a
direct Ultralytics call on the original image gives; --register points .env at it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from celery_worker.imaging import letterbox, unletterbox
from common.settings import REPO_ROOT


@pytest.fixture(scope="module")
def onnx_model(yolo_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_file = tmp_path_factory.mktemp("export") / ".env"
    env_file.write_text("CV_DEVICE=cpu\nCV_DETECT_WEIGHTS=models/yolov8n.pt\n")
    out = env_file.parent / "yolov8n-test.onnx"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "celery_worker.export",
            str(yolo_weights),
            "--out",
            str(out),
            "--register",
            "detect",
            "--env-file",
            str(env_file),
        ],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert env_file.read_text().splitlines() == ["CV_DEVICE=cpu", f"CV_DETECT_WEIGHTS={out}"]
    return out


@pytest.mark.parametrize("photo", ["bus.jpg", "zidane.jpg"])
def test_onnx_model_through_the_square_letterbox_matches_ultralytics(
    onnx_model: Path, assets: Path, photo: str
) -> None:
    from ultralytics import YOLO

    model = YOLO(str(onnx_model), task="detect")
    original = cv2.imread(str(assets / photo))
    direct = model.predict(original, imgsz=640, verbose=False)[0]
    model_input, box = letterbox(original, 640, auto=False)  # what preprocess does for .onnx
    assert model_input.shape[:2] == (640, 640)
    served = model.predict(model_input, imgsz=640, verbose=False)[0]
    assert len(direct.boxes) > 0 and len(served.boxes) == len(direct.boxes)
    boxes = unletterbox(served.boxes.xyxy.numpy(), box, original.shape[1], original.shape[0])
    np.testing.assert_allclose(boxes, direct.boxes.xyxy.numpy(), atol=2e-3)
    assert served.boxes.cls.tolist() == direct.boxes.cls.tolist()
