"""segment through the real stack equals a direct Ultralytics call (boxes, classes, masks)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.support.api import run_job
from tests.support.masks import decode_rle

pytestmark = [pytest.mark.broker, pytest.mark.workers]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


@pytest.mark.parametrize("photo", ["bus.jpg", "zidane.jpg"])  # both need letterboxing
def test_segment_equals_a_direct_ultralytics_call(
    api_client: Any, assets: Path, yolo_seg_weights: Path, photo: str
) -> None:
    from ultralytics import YOLO
    from ultralytics.utils.ops import scale_masks

    job = run_job(
        api_client,
        assets / photo,
        {"pipeline": "segment", "max_detections": 40, "rle": True, "output_format": "png"},
    )
    assert job["state"] == "succeeded", job["error"]
    response = api_client.get(f"/v1/jobs/{job['id']}/result")
    assert response.status_code == 200, response.text
    result = response.json()
    direct = YOLO(str(yolo_seg_weights)).predict(
        str(assets / photo), max_det=40, device="cpu", verbose=False
    )[0]
    height, width = direct.orig_shape
    detections = result["detections"]
    assert len(direct.boxes) > 0 and direct.masks is not None
    assert len(detections) == len(direct.boxes)
    np.testing.assert_allclose([d["box"] for d in detections], direct.boxes.xyxy.numpy(), atol=2e-3)
    assert [d["class_id"] for d in detections] == direct.boxes.cls.int().tolist()
    np.testing.assert_allclose(
        [d["confidence"] for d in detections], direct.boxes.conf.numpy(), atol=1e-5
    )
    assert (
        result["model"]["weights_sha256"]
        == hashlib.sha256(yolo_seg_weights.read_bytes()).hexdigest()
    )

    expected = scale_masks(direct.masks.data[None].float(), (height, width))[0].numpy() > 0.5
    labels_png = api_client.get(f"/v1/jobs/{job['id']}/artifacts/labels.png")
    assert labels_png.headers["content-type"] == "image/png"
    labels = cv2.imdecode(np.frombuffer(labels_png.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (height, width)
    ious = []
    single_parts = 0
    for index, detection in enumerate(detections):
        mask = decode_rle(detection["rle"])
        assert detection["area"] == int(mask.sum())
        ious.append(iou(mask, expected[index]))
        # Outlines: the same contours as Ultralytics' masks.xy, mapped the same way. Where a
        # mask has several parts Ultralytics joins them into one ring; we keep one per part.
        if len(detection["polygons"]) == 1:
            np.testing.assert_allclose(detection["polygons"][0], direct.masks.xy[index], atol=0.01)
        # Every outline lies inside the image and, for masks of some size, along the mask
        # (within a few pixels: outlines follow the coarser model-size grid, and specks one
        # model pixel wide vanish in the full-size mask).
        for polygon in detection["polygons"]:
            points = np.asarray(polygon)
            assert (points >= 0).all() and (points <= [width, height]).all()
        if len(detection["polygons"]) == 1 and mask.sum() > 2000:
            near = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=4)
            points = np.round(np.asarray(detection["polygons"][0])).astype(int)
            points = np.clip(points, 0, [width - 1, height - 1])
            assert (near[points[:, 1], points[:, 0]] > 0).mean() > 0.95, index
        single_parts += len(detection["polygons"]) == 1
    assert min(ious) >= 0.99, ious
    assert single_parts > 0
    # the label map holds each instance where no more confident one overlaps it
    for index in range(len(detections)):
        owned = labels == index + 1
        assert not (owned & ~expected[index]).any()
    covered = np.zeros((height, width), bool)
    for index in range(len(detections)):
        assert ((labels == index + 1) == (expected[index] & ~covered)).mean() > 0.999
        covered |= expected[index]
    overlay = api_client.get(f"/v1/jobs/{job['id']}/artifacts/overlay.png")
    assert overlay.status_code == 200
