"""Models on batches of video frames -> per-frame detections in frame pixels (plain dicts).

The image steps hand the model a preprocessed array and map results back in
postprocess; a video's frames are already the size the output video has, so
the model gets them as they are (Ultralytics letterboxes them itself, as for
a direct ``predict`` call) and the boxes come back in frame pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from celery_worker.adapters import from_mtcnn, from_ultralytics
from celery_worker.models import LoadedModel

# As the image pipeline: MTCNN searches large frames at this size (tasks/preprocess.py).
FACES_MAX_SIDE = 1600

Detections = list[dict[str, Any]]


def detect_frames(
    loaded: LoadedModel, frames: Sequence[np.ndarray], options: dict[str, Any]
) -> list[Detections]:
    """Run the model of ``loaded`` (detect, segment or faces) on frames, ``max_batch`` at once."""
    config = loaded.spec.config
    batch = max(1, config.max_batch if config else 1)
    out: list[Detections] = []
    for first in range(0, len(frames), batch):
        part = frames[first : first + batch]
        if loaded.spec.task == "faces":
            out.extend(_faces(loaded, part, float(options["min_confidence"])))
        else:
            out.extend(_yolo(loaded, part, options))
    return out


def yolo_arguments(options: dict[str, Any], device: str) -> dict[str, Any]:
    """Ultralytics ``predict`` keywords from a job's options (images and videos alike)."""
    return {
        "imgsz": int(options["image_size"]),
        "conf": float(options["confidence"]),
        "iou": float(options["iou"]),
        "max_det": int(options["max_detections"]),
        "classes": options.get("classes") or None,
        "device": device,
        "verbose": False,
    }


def _yolo(
    loaded: LoadedModel, frames: Sequence[np.ndarray], options: dict[str, Any]
) -> list[Detections]:
    names: dict[int, str] = loaded.info.get("names", {})
    results = loaded.model.predict(list(frames), **yolo_arguments(options, loaded.device))
    out = []
    for result in results:
        raw = from_ultralytics(result)
        detections = [
            {
                "box": [round(float(v), 2) for v in box],
                "confidence": round(float(score), 5),
                "class_id": int(cls),
                "class_name": str(names.get(int(cls), str(cls))),
            }
            for box, score, cls in zip(raw["boxes"], raw["scores"], raw["classes"], strict=True)
        ]
        if loaded.spec.task == "segment":
            outlines = result.masks.xy if result.masks is not None else []
            for detection, outline in zip(detections, outlines, strict=True):
                polygon = np.asarray(outline, np.float32).reshape(-1, 2)
                detection["polygons"] = [polygon.round(1).tolist()] if len(polygon) >= 3 else []
                detection["area"] = (
                    round(float(cv2.contourArea(polygon))) if len(polygon) >= 3 else 0
                )
        out.append(detections)
    return out


def _faces(
    loaded: LoadedModel, frames: Sequence[np.ndarray], min_confidence: float
) -> list[Detections]:
    height, width = frames[0].shape[:2]
    scale = min(1.0, FACES_MAX_SIDE / max(height, width))
    size = (round(width * scale), round(height * scale))
    rgb = np.stack(
        [
            cv2.cvtColor(
                cv2.resize(f, size, interpolation=cv2.INTER_AREA) if scale < 1 else f,
                cv2.COLOR_BGR2RGB,
            )
            for f in frames
        ]
    )
    boxes, probs, landmarks = loaded.model.detect(rgb, landmarks=True)
    out = []
    for index in range(len(frames)):
        raw = from_mtcnn(boxes[index], probs[index], landmarks[index])
        detections = []
        for box, score, marks in zip(raw["boxes"], raw["scores"], raw["landmarks"], strict=True):
            if score < min_confidence:
                continue
            x1, y1, x2, y2 = (v / scale for v in box)
            detections.append(
                {
                    "box": [
                        round(min(max(x1, 0.0), width), 2),
                        round(min(max(y1, 0.0), height), 2),
                        round(min(max(x2, 0.0), width), 2),
                        round(min(max(y2, 0.0), height), 2),
                    ],
                    "confidence": round(float(score), 5),
                    "class_id": 0,
                    "class_name": "face",
                    "landmarks": [[round(x / scale, 1), round(y / scale, 1)] for x, y in marks],
                }
            )
        out.append(detections)
    return out
