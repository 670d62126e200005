"""The registered steps and the options they read: what pipelines are built from.

Stdlib only, shared by the API and the workers. Steps are code, registered here by
name (task, queue, options, the stem of what they render); pipelines are
configuration (``config/pipelines.yaml``, loaded by ``common.catalogue``): ordered
step names, a default model and option defaults. A test checks that the OpenAPI
spec offers exactly ``ALL_OPTIONS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from common.contract import (
    QUEUE_INFERENCE,
    QUEUE_POSTPROCESS,
    QUEUE_PREPROCESS,
    TASK_INFER_DETECT,
    TASK_INFER_DETECT_SAM,
    TASK_INFER_FACES,
    TASK_INFER_SAM,
    TASK_INFER_SEGMENT,
    TASK_POSTPROCESS_BLUR,
    TASK_POSTPROCESS_CROPS,
    TASK_POSTPROCESS_DETECT,
    TASK_POSTPROCESS_REDACT,
    TASK_POSTPROCESS_SEGMENT,
    TASK_PREPROCESS_IMAGE,
    TASK_PREPROCESS_VIDEO,
    ModelTask,
)

OptionType = Literal["number", "integer", "boolean", "string", "class-list"]
# Which uploads an option applies to; a video-only option sent with an image is refused.
Media = Literal["any", "video"]


@dataclass(frozen=True)
class Option:
    """One pipeline option as clients see it in ``GET /v1/pipelines``."""

    name: str
    type: OptionType
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None
    media: Media = "any"


@dataclass(frozen=True)
class StepDef:
    """A registered step: the Celery task that runs it, its queue, the options it reads.

    ``model_task`` is set on inference steps: the kind of model they run.
    ``render_stem`` on postprocess steps: the stem of the main artifact they write
    (``<stem>.jpg`` for an image, ``<stem>.mp4`` for a video).
    Pipelines (``config/pipelines.yaml``) are ordered lists of these names.
    """

    name: str
    task: str
    queue: str
    options: tuple[Option, ...] = ()
    model_task: ModelTask | None = None
    render_stem: str | None = None

    @property
    def stage(self) -> str:
        return self.queue


_OUTPUT_FORMAT = Option(
    "output_format", "string", "jpeg", "Image format of the image artifact.", enum=("jpeg", "png")
)
_DRAW_LABELS = Option("draw_labels", "boolean", True, "Write class and score beside boxes.")
_MODEL = Option("model", "string", None, "Model to run (GET /v1/models); default per pipeline.")
_YOLO_OPTIONS = (
    _MODEL,
    Option("confidence", "number", 0.25, "Minimum detection confidence.", 0, 1),
    Option("iou", "number", 0.7, "IoU threshold of non-maximum suppression.", 0, 1),
    Option("max_detections", "integer", 300, "Most boxes kept.", 1, 1000),
    Option("classes", "class-list", None, "Class ids to keep (default all)."),
    Option("image_size", "integer", 640, "Model input size (multiple of 32).", 32, 2048),
)
_SAM_OPTIONS = (
    _MODEL,
    Option(
        "boxes",
        "string",
        None,
        "sam: JSON [[x1, y1, x2, y2], ...] in original pixels, one object each.",
    ),
    Option(
        "points",
        "string",
        None,
        "sam: JSON [[x, y], ...] (one object each) or [[[x, y], ...], ...] (points per "
        "object); with boxes, row n of each is object n.",
    ),
    Option(
        "labels",
        "string",
        None,
        "sam: JSON labels shaped as points without coordinates: 1 in the object, 0 not "
        "(default all 1).",
    ),
)
_DETECT_SAM_OPTIONS = (
    _MODEL,
    Option("detector", "string", "yolov8n", "detect-sam: the detect model whose boxes prompt SAM."),
    *_YOLO_OPTIONS[1:],
)
_BLUR_METHOD = Option(
    "blur_method", "string", "gaussian", "How regions are hidden.", enum=("gaussian", "pixelate")
)
_BLUR_STRENGTH = Option("blur_strength", "integer", 50, "1 (light) to 100 (heavy).", 1, 100)
_VIDEO_OPTIONS = (
    Option(
        "fps",
        "number",
        None,
        "Videos: frames per second to analyse (default every frame; never above the "
        "source's rate).",
        0.1,
        240,
        media="video",
    ),
    Option(
        "max_side",
        "integer",
        None,
        "Videos: downscale frames so the longer side is at most this (default: keep the size).",
        32,
        8192,
        media="video",
    ),
)


def _margin(default: float) -> Option:
    return Option("margin", "number", default, "Widen each box by this fraction per side.", 0, 1)


def _hiding(margin: float) -> tuple[Option, ...]:
    """The options of a step that hides what was found."""
    return (_BLUR_METHOD, _BLUR_STRENGTH, _margin(margin), _OUTPUT_FORMAT)


def _postprocess(name: str, task: str, stem: str, *options: Option) -> StepDef:
    return StepDef(f"postprocess.{name}", task, QUEUE_POSTPROCESS, options, render_stem=stem)


STEPS: dict[str, StepDef] = {
    step.name: step
    for step in (
        StepDef("preprocess.image", TASK_PREPROCESS_IMAGE, QUEUE_PREPROCESS),
        # Implied for every pipeline when the upload is a video (never listed in a pipeline).
        StepDef("preprocess.video", TASK_PREPROCESS_VIDEO, QUEUE_PREPROCESS, _VIDEO_OPTIONS),
        StepDef("inference.detect", TASK_INFER_DETECT, QUEUE_INFERENCE, _YOLO_OPTIONS, "detect"),
        StepDef("inference.segment", TASK_INFER_SEGMENT, QUEUE_INFERENCE, _YOLO_OPTIONS, "segment"),
        StepDef(
            "inference.faces",
            TASK_INFER_FACES,
            QUEUE_INFERENCE,
            (_MODEL, Option("min_confidence", "number", 0.9, "Minimum face probability.", 0, 1)),
            "faces",
        ),
        StepDef("inference.sam", TASK_INFER_SAM, QUEUE_INFERENCE, _SAM_OPTIONS, "sam"),
        StepDef(
            "inference.detect-sam",
            TASK_INFER_DETECT_SAM,
            QUEUE_INFERENCE,
            _DETECT_SAM_OPTIONS,
            "sam",
        ),
        _postprocess(
            "annotate", TASK_POSTPROCESS_DETECT, "annotated", _DRAW_LABELS, _OUTPUT_FORMAT
        ),
        _postprocess(
            "segment",
            TASK_POSTPROCESS_SEGMENT,
            "overlay",
            _DRAW_LABELS,
            Option("rle", "boolean", False, "Also give each mask as COCO run-length encoding."),
            _OUTPUT_FORMAT,
        ),
        _postprocess("blur-faces", TASK_POSTPROCESS_BLUR, "blurred", *_hiding(0.15)),
        _postprocess("crops", TASK_POSTPROCESS_CROPS, "annotated", _margin(0.0), _OUTPUT_FORMAT),
        _postprocess("redact", TASK_POSTPROCESS_REDACT, "redacted", *_hiding(0.05)),
    )
}

# Every option any step reads: the multipart fields POST /v1/jobs accepts besides
# file, pipeline and callback_url (the spec lists exactly these; a test checks).
ALL_OPTIONS: dict[str, Option] = {o.name: o for step in STEPS.values() for o in step.options}
VIDEO_STEP = STEPS["preprocess.video"]
# The stem of the main artifact each postprocess step writes.
RENDER_STEMS = {name: step.render_stem for name, step in STEPS.items() if step.render_stem}
