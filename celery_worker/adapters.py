"""Model outputs -> plain JSON-safe data, at the boundary (lists, never tensors)."""

from __future__ import annotations

from typing import Any

import numpy as np


def from_ultralytics(result: Any) -> dict[str, Any]:
    """One Ultralytics ``Results`` (detect) -> xyxy boxes in model-input pixels, scores, classes."""
    boxes = result.boxes
    if boxes is None or len(boxes) == 0:
        return {"boxes": [], "scores": [], "classes": []}
    return {
        "boxes": boxes.xyxy.cpu().numpy().astype(float).tolist(),
        "scores": boxes.conf.cpu().numpy().astype(float).tolist(),
        "classes": boxes.cls.cpu().numpy().astype(int).tolist(),
    }


def from_mtcnn(boxes: Any, probs: Any, landmarks: Any) -> dict[str, Any]:
    """MTCNN's ``detect`` output (None when no face) -> boxes, scores, landmarks."""
    if boxes is None:
        return {"boxes": [], "scores": [], "landmarks": []}
    return {
        "boxes": np.asarray(boxes, dtype=float).reshape(-1, 4).tolist(),
        "scores": np.asarray(probs, dtype=float).reshape(-1).tolist(),
        "landmarks": np.asarray(landmarks, dtype=float).reshape(-1, 5, 2).tolist(),
    }
