"""Model outputs -> ``Detections``, at the boundary: the only code that reads tensors.

Each adapter takes what a library returned (Ultralytics ``Results``, MTCNN's arrays)
and answers in pixels of the original picture, so nothing after inference knows
how the model was fed.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from celery_worker.detections import Detections
from celery_worker.imaging import unletterbox
from common.contract import Letterbox


def from_yolo(
    result: Any,
    names: dict[int, str],
    letterbox: Letterbox | None = None,
    size: tuple[int, int] | None = None,
) -> Detections:
    """One Ultralytics ``Results`` (detect or segment) as ``Detections``.

    With ``letterbox`` and ``size`` (width, height), the model ran on our own
    letterboxed input (the image steps) and boxes are mapped back to the original.
    Without, Ultralytics letterboxed the picture itself (video frames): boxes are in
    its pixels already, and a segment model's outlines (``masks.xy``) come along with
    their areas.
    """
    boxes = result.boxes
    if boxes is None or len(boxes) == 0:
        return Detections.empty()
    xyxy = boxes.xyxy.cpu().numpy().astype(np.float64)
    class_id = boxes.cls.cpu().numpy().astype(np.int64)
    if letterbox is not None:
        if size is None:
            raise ValueError("mapping boxes back needs the original size")
        xyxy = unletterbox(xyxy, letterbox, *size)
    detections = Detections(
        xyxy=xyxy,
        confidence=boxes.conf.cpu().numpy().astype(np.float64),
        class_id=class_id,
        class_name=tuple(str(names.get(int(c), str(int(c)))) for c in class_id),
    )
    if letterbox is None and result.masks is not None:
        outlines = [np.asarray(o, np.float32).reshape(-1, 2) for o in result.masks.xy]
        return detections.with_columns(
            polygons=tuple([o.tolist()] if len(o) >= 3 else [] for o in outlines),
            area=tuple(round(float(cv2.contourArea(o))) if len(o) >= 3 else 0 for o in outlines),
        )
    return detections


def yolo_masks(result: Any, height: int, width: int) -> NDArray[np.bool_]:
    """A segment model's instance masks at its input size, (n, height, width) bool."""
    if result.masks is None:
        return np.zeros((0, height, width), bool)
    masks: NDArray[np.bool_] = result.masks.data.cpu().numpy() > 0.5
    return masks


def from_mtcnn(
    boxes: Any,
    probs: Any,
    landmarks: Any,
    scale: float,
    size: tuple[int, int],
    min_confidence: float,
) -> Detections:
    """MTCNN's ``detect`` output for one picture (None when no face) as ``Detections``.

    The model saw the picture scaled by ``scale``; boxes are scaled back and clipped
    to ``size`` (width, height). Faces below ``min_confidence`` are dropped.
    """
    if boxes is None:
        return Detections.empty()
    width, height = size
    xyxy = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(probs, np.float64).reshape(-1)
    keep = scores >= min_confidence
    xyxy = xyxy[keep] / scale
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
    count = int(keep.sum())
    return Detections(
        xyxy=xyxy,
        confidence=scores[keep],
        class_id=np.zeros(count, np.int64),
        class_name=("face",) * count,
        landmarks=np.asarray(landmarks, np.float64).reshape(-1, 5, 2)[keep] / scale,
    )
