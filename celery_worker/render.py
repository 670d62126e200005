"""What a postprocess step draws on a picture, by the step's name: boxes, tints or blur.

One function for a photo and for each frame of a video, so both show the same.
Photos of segment models are tinted from their full-resolution masks instead
(``tasks.postprocess``); everything else comes through here.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from celery_worker import masks
from celery_worker.detections import Detections
from celery_worker.imaging import colour_for, draw_detections, hide_regions, widen

HIDING_STEPS = ("postprocess.blur-faces", "postprocess.redact")
RENDERED_STEPS = (
    "postprocess.annotate",
    "postprocess.segment",
    "postprocess.crops",
    *HIDING_STEPS,
)


def render_frame(
    step: str, frame: np.ndarray, detections: Detections, options: dict[str, Any]
) -> np.ndarray:
    """``frame`` (BGR) as the pipeline's postprocess step shows it; a new array."""
    if step not in RENDERED_STEPS:
        raise ValueError(f"no video rendering for step {step!r}")
    if step in HIDING_STEPS:
        return hide(frame, detections, options)
    canvas = frame
    if step == "postprocess.segment":
        canvas = tint_polygons(frame, detections)
    return draw_detections(canvas, detections, bool(options.get("draw_labels", True)))


def hide(frame: np.ndarray, detections: Detections, options: dict[str, Any]) -> np.ndarray:
    """The detections, widened by the ``margin`` option, blurred or pixelated."""
    height, width = frame.shape[:2]
    regions = widen(detections.xyxy, float(options["margin"]), width, height)
    return hide_regions(frame, regions, str(options["blur_method"]), int(options["blur_strength"]))


def tint_polygons(frame: np.ndarray, detections: Detections) -> np.ndarray:
    """A copy of ``frame`` with each detection's outlines filled in its class's colour."""
    height, width = frame.shape[:2]
    canvas = frame.copy()
    for name, polygons in zip(detections.class_name, detections.polygons or (), strict=False):
        outlines = [
            np.asarray(p, np.float32).round().astype(np.int32) for p in polygons if len(p) >= 3
        ]
        if not outlines:
            continue
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, outlines, 1)
        masks.tint(canvas, mask.astype(bool), colour_for(name))
    return canvas
