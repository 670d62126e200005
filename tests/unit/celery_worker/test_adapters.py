"""Model outputs -> Detections at the boundary: scaling back, clipping, thresholds, names."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from celery_worker.adapters import from_mtcnn, from_yolo, yolo_masks
from common.contract import Letterbox


def test_mtcnn_faces_are_filtered_scaled_back_and_clipped() -> None:
    boxes = np.array([[10.0, 10.0, 60.0, 70.0], [-4.0, 5.0, 20.0, 600.0], [1, 1, 2, 2]])
    probs = np.array([0.99, 0.95, 0.5])
    landmarks = np.ones((3, 5, 2)) * 20
    found = from_mtcnn(boxes, probs, landmarks, scale=0.5, size=(200, 300), min_confidence=0.9)
    assert found.class_name == ("face", "face")
    np.testing.assert_allclose(found.xyxy, [[20, 20, 120, 140], [0, 10, 40, 300]])
    np.testing.assert_allclose(found.confidence, [0.99, 0.95])
    assert found.landmarks is not None and (found.landmarks == 40).all()


def test_mtcnn_without_faces() -> None:
    assert len(from_mtcnn(None, [None], [None], 1.0, (10, 10), 0.9)) == 0


class Boxes:
    """What the adapter reads of Ultralytics' ``Boxes``: tensors, as the model returns them."""

    def __init__(self, xyxy: list[list[float]]) -> None:
        self.xyxy = torch.tensor(xyxy)
        self.conf = torch.full((len(xyxy),), 0.8)
        self.cls = torch.tensor([0.0, 5.0][: len(xyxy)])

    def __len__(self) -> int:
        return len(self.xyxy)


def results(xyxy: list[list[float]], masks: object = None) -> SimpleNamespace:
    return SimpleNamespace(boxes=Boxes(xyxy), masks=masks)


def test_yolo_boxes_are_mapped_back_through_the_letterbox_with_names() -> None:
    box: Letterbox = {"scale": 0.5, "pad_x": 0.0, "pad_y": 16.0, "width": 320, "height": 224}
    found = from_yolo(
        results([[0, 16, 100, 116], [10, 20, 30, 40]]), {0: "person"}, box, (640, 384)
    )
    np.testing.assert_allclose(found.xyxy[0], [0, 0, 200, 200])
    assert found.class_name == ("person", "5")  # no name: the id
    assert found.polygons is None


def test_yolo_video_frames_bring_their_outlines() -> None:
    masks = SimpleNamespace(xy=[np.array([[0, 0], [10, 0], [10, 10]], np.float32)])
    found = from_yolo(results([[0, 0, 10, 10]], masks), {0: "person"})
    assert found.polygons == ([[[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]]],)
    assert found.area == (50,)


def test_yolo_without_masks_gives_an_empty_stack() -> None:
    assert yolo_masks(SimpleNamespace(masks=None), 32, 48).shape == (0, 32, 48)
