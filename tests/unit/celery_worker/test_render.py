"""What each postprocess step draws on a picture (celery_worker.render)."""

from __future__ import annotations

import numpy as np
import pytest

from celery_worker.detections import Detections
from celery_worker.render import RENDERED_STEPS, render_frame
from common.steps import RENDER_STEMS, STEPS

FRAME = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
BOX = {"box": [40.0, 30.0, 80.0, 70.0], "confidence": 0.9, "class_id": 0, "class_name": "face"}
OPTIONS = {"margin": 0.0, "blur_method": "gaussian", "blur_strength": 50, "draw_labels": True}


@pytest.mark.parametrize("step", ["postprocess.blur-faces", "postprocess.redact"])
def test_hiding_changes_only_the_boxes(step: str) -> None:
    out = render_frame(step, FRAME, Detections.from_json([BOX]), OPTIONS)
    inside = (slice(30, 70), slice(40, 80))
    assert not np.array_equal(out[inside], FRAME[inside])
    outside = np.ones(FRAME.shape[:2], bool)
    outside[inside] = False
    assert np.array_equal(out[outside], FRAME[outside])


def test_segment_tints_inside_the_polygon_only() -> None:
    detection = {**BOX, "polygons": [[[50, 40], [70, 40], [70, 60], [50, 60]]]}
    detections = Detections.from_json([detection])
    out = render_frame("postprocess.segment", FRAME, detections, {"draw_labels": False})
    assert not np.array_equal(out[45:55, 55:65], FRAME[45:55, 55:65])
    assert np.array_equal(out[:20, :], FRAME[:20, :])  # far from the box and its label


def test_annotate_draws_without_touching_the_input() -> None:
    before = FRAME.copy()
    out = render_frame("postprocess.annotate", FRAME, Detections.from_json([BOX]), OPTIONS)
    assert np.array_equal(FRAME, before)
    assert not np.array_equal(out, FRAME)
    with pytest.raises(ValueError, match="no video rendering"):
        render_frame("postprocess.nope", FRAME, Detections.empty(), OPTIONS)


def test_every_postprocess_step_has_a_video_rendering() -> None:
    postprocess = {s.name for s in STEPS.values() if s.stage == "postprocess"}
    assert postprocess == set(RENDERED_STEPS) == set(RENDER_STEMS)
