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
from celery_worker.models import rectangular_input
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


@pytest.fixture(scope="module")
def static_onnx(yolo_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixed-size (640x640) export, made in its own process like the CLI's."""
    copy = tmp_path_factory.mktemp("static") / "static.pt"
    copy.write_bytes(yolo_weights.read_bytes())
    code = (
        "import sys; from ultralytics import YOLO; "
        "YOLO(sys.argv[1]).export(format='onnx', imgsz=640, dynamic=False, verbose=False)"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(copy)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return copy.with_suffix(".onnx")


@pytest.mark.parametrize("photo", ["bus.jpg", "zidane.jpg"])
@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_onnx_model_through_the_services_letterbox_matches_ultralytics(
    onnx_model: Path, static_onnx: Path, assets: Path, photo: str, kind: str
) -> None:
    from ultralytics import YOLO

    weights = onnx_model if kind == "dynamic" else static_onnx
    rectangular = rectangular_input(weights)
    assert rectangular is (kind == "dynamic")
    model = YOLO(str(weights), task="detect")
    original = cv2.imread(str(assets / photo))
    direct = model.predict(original, imgsz=640, verbose=False)[0]
    model_input, box = letterbox(original, 640, auto=rectangular)  # what preprocess does
    assert (model_input.shape[:2] == (640, 640)) is (kind == "static")
    served = model.predict(model_input, imgsz=640, verbose=False)[0]
    assert len(direct.boxes) > 0 and len(served.boxes) == len(direct.boxes)
    boxes = unletterbox(served.boxes.xyxy.numpy(), box, original.shape[1], original.shape[0])
    np.testing.assert_allclose(boxes, direct.boxes.xyxy.numpy(), atol=2e-3)
    assert served.boxes.cls.tolist() == direct.boxes.cls.tolist()


def test_onnx_sessions_do_not_spin(onnx_model: Path) -> None:
    from celery_worker.models import ModelRegistry, specs_from
    from common.catalogue import ModelConfig

    config = ModelConfig("y", "detect", onnx_model, "onnx")
    loaded = ModelRegistry(specs_from({"y": config}), "cpu").get("y")
    session = loaded.model.predictor.model.backend.session
    assert (
        session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        == "0"
    )
