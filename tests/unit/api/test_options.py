"""Options: defaults, coercion of form strings, bounds, and refusal of foreign options."""

from __future__ import annotations

from typing import Any

import pytest

from api.errors import BadRequest
from api.options import get_pipeline, resolve_options
from tests.support.catalogue import CATALOGUE, PIPELINES


def test_defaults_fill_missing_options() -> None:
    options = resolve_options(CATALOGUE, PIPELINES["detect"], {"pipeline": "detect"})
    assert options == PIPELINES["detect"].defaults()
    assert options["model"] == "yolov8n" and options["image_size"] == 640


def test_pipeline_defaults_from_the_file_are_coerced() -> None:
    options = resolve_options(CATALOGUE, PIPELINES["redact"], {})
    assert options["classes"] == [0] and options["blur_method"] == "pixelate"


def test_model_must_have_the_pipelines_task() -> None:
    with pytest.raises(BadRequest, match="its detect models are yolov8n"):
        resolve_options(CATALOGUE, PIPELINES["detect"], {"model": "mtcnn"})
    with pytest.raises(BadRequest, match="cannot run"):
        resolve_options(CATALOGUE, PIPELINES["segment"], {"model": "nope"})


@pytest.mark.parametrize(
    ("pipeline", "fields", "expected"),
    [
        ("detect", {"confidence": "0.5"}, {"confidence": 0.5}),
        ("detect", {"classes": "2, 0,2"}, {"classes": [0, 2]}),
        ("detect", {"draw_labels": "false"}, {"draw_labels": False}),
        ("detect", {"draw_labels": True}, {"draw_labels": True}),
        ("detect", {"image_size": 320}, {"image_size": 320}),
        (
            "blur-faces",
            {"blur_method": "pixelate", "blur_strength": "80"},
            {"blur_method": "pixelate", "blur_strength": 80},
        ),
    ],
)
def test_values_are_coerced(
    pipeline: str, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    options = resolve_options(CATALOGUE, PIPELINES[pipeline], fields)
    assert {k: options[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("pipeline", "fields", "message"),
    [
        ("blur-faces", {"confidence": "0.5"}, "has no option 'confidence'"),
        ("detect", {"blur_method": "gaussian"}, "has no option 'blur_method'"),
        ("detect", {"confidence": "2"}, "must be <= 1"),
        ("detect", {"max_detections": "0"}, "must be >= 1"),
        ("detect", {"image_size": "100"}, "multiple of 32"),
        ("detect", {"draw_labels": "maybe"}, "is not a boolean"),
        ("detect", {"confidence": "high"}, "is not a number"),
        ("blur-faces", {"blur_method": "smudge"}, "must be one of gaussian, pixelate"),
    ],
)
def test_bad_options_are_refused(pipeline: str, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        resolve_options(CATALOGUE, PIPELINES[pipeline], fields)


def test_unknown_pipeline_lists_the_known_ones() -> None:
    with pytest.raises(BadRequest, match="choose one of blur-faces, detect, detect-crops"):
        get_pipeline(CATALOGUE, "segment-everything")
