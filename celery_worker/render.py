"""What a postprocess step draws on one frame of a video, by the step's name.

The image steps (``tasks.postprocess``) work on one photo with results in model
coordinates; a video's frames arrive with detections already in frame pixels,
so each step's drawing is this one function per frame.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from celery_worker import masks
from celery_worker.imaging import colour_for, draw_detections, hide_regions, widen

HIDING_STEPS = ("postprocess.blur-faces", "postprocess.redact")
RENDERED_STEPS = (
    "postprocess.annotate",
    "postprocess.segment",
    "postprocess.crops",
    *HIDING_STEPS,
)


def render_frame(
    step: str, frame: np.ndarray, detections: list[dict[str, Any]], options: dict[str, Any]
) -> np.ndarray:
    """``frame`` (BGR) as the pipeline's postprocess step shows it; a new array."""
    if step not in RENDERED_STEPS:
        raise ValueError(f"no video rendering for step {step!r}")
    height, width = frame.shape[:2]
    boxes = np.asarray([d["box"] for d in detections], dtype=np.float64).reshape(-1, 4)
    if step in HIDING_STEPS:
        regions = widen(boxes, float(options["margin"]), width, height)
        return hide_regions(
            frame, regions, str(options["blur_method"]), int(options["blur_strength"])
        )
    canvas = frame
    if step == "postprocess.segment":
        canvas = frame.copy()
        for detection in detections:
            outlines = [
                np.asarray(p, np.float32).round().astype(np.int32)
                for p in detection.get("polygons") or []
                if len(p) >= 3
            ]
            if not outlines:
                continue
            mask = np.zeros((height, width), np.uint8)
            cv2.fillPoly(mask, outlines, 1)
            masks.tint(canvas, mask.astype(bool), colour_for(detection["class_name"]))
    labels = [f"{d['class_name']} {d['confidence']:.2f}" for d in detections]
    return draw_detections(canvas, boxes, labels, bool(options.get("draw_labels", True)))
