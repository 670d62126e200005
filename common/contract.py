"""The contract between the API and the workers: queues, task names, pipelines, payloads.

Stdlib only. The API refers to tasks by these names and never imports the task
code; the workers register their tasks under the same names. A test checks that
both sides agree and that the OpenAPI spec offers exactly these options.

Steps are code, registered here by name (task, queue, the options they read);
pipelines are configuration (``config/pipelines.yaml``, loaded by
``common.catalogue``): ordered step names, a default model and option defaults.
Between steps travels a ``Payload`` dict (JSON only): the job id, the model
name, the options, storage keys of the files the previous step wrote, and what
the next step needs to map results back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypedDict

QUEUE_PREPROCESS = "preprocess"
QUEUE_INFERENCE = "inference"
QUEUE_POSTPROCESS = "postprocess"
# Callbacks wait on other people's servers: their own queue, so they never hold up a job.
QUEUE_NOTIFY = "notify"
QUEUES = (QUEUE_PREPROCESS, QUEUE_INFERENCE, QUEUE_POSTPROCESS, QUEUE_NOTIFY)

TASK_PREPROCESS_IMAGE = "cv.preprocess.image"
TASK_INFER_DETECT = "cv.inference.detect"
TASK_INFER_FACES = "cv.inference.faces"
TASK_INFER_SEGMENT = "cv.inference.segment"
TASK_POSTPROCESS_DETECT = "cv.postprocess.detect"
TASK_POSTPROCESS_BLUR = "cv.postprocess.blur_faces"
TASK_POSTPROCESS_SEGMENT = "cv.postprocess.segment"
TASK_POSTPROCESS_CROPS = "cv.postprocess.crops"
TASK_POSTPROCESS_REDACT = "cv.postprocess.redact"
TASK_NOTIFY = "cv.notify.job"
TASK_JANITOR = "cv.postprocess.janitor"

# Celery routes by task-name prefix: "cv.<queue>.<what>".
TASK_ROUTES = {f"cv.{queue}.*": {"queue": queue} for queue in QUEUES}


def artifact_href(job_id: str, name: str) -> str:
    return f"/v1/jobs/{job_id}/artifacts/{name}"


JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE_STATES: tuple[JobState, ...] = ("queued", "running")
TERMINAL_STATES: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")
JOB_STATES: tuple[JobState, ...] = ACTIVE_STATES + TERMINAL_STATES

ModelTask = Literal["detect", "segment", "faces"]
MODEL_TASKS: tuple[ModelTask, ...] = ("detect", "segment", "faces")
STAGES = ("preprocess", "inference", "postprocess")

OptionType = Literal["number", "integer", "boolean", "string", "class-list"]


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


@dataclass(frozen=True)
class StepDef:
    """A registered step: the Celery task that runs it, its queue, the options it reads.

    ``model_task`` is set on inference steps: the kind of model they run.
    Pipelines (``config/pipelines.yaml``) are ordered lists of these names.
    """

    name: str
    task: str
    queue: str
    options: tuple[Option, ...] = ()
    model_task: ModelTask | None = None

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
_BLUR_METHOD = Option(
    "blur_method", "string", "gaussian", "How regions are hidden.", enum=("gaussian", "pixelate")
)
_BLUR_STRENGTH = Option("blur_strength", "integer", 50, "1 (light) to 100 (heavy).", 1, 100)


def _margin(default: float) -> Option:
    return Option("margin", "number", default, "Widen each box by this fraction per side.", 0, 1)


STEPS: dict[str, StepDef] = {
    step.name: step
    for step in (
        StepDef("preprocess.image", TASK_PREPROCESS_IMAGE, QUEUE_PREPROCESS),
        StepDef("inference.detect", TASK_INFER_DETECT, QUEUE_INFERENCE, _YOLO_OPTIONS, "detect"),
        StepDef("inference.segment", TASK_INFER_SEGMENT, QUEUE_INFERENCE, _YOLO_OPTIONS, "segment"),
        StepDef(
            "inference.faces",
            TASK_INFER_FACES,
            QUEUE_INFERENCE,
            (_MODEL, Option("min_confidence", "number", 0.9, "Minimum face probability.", 0, 1)),
            "faces",
        ),
        StepDef(
            "postprocess.annotate",
            TASK_POSTPROCESS_DETECT,
            QUEUE_POSTPROCESS,
            (_DRAW_LABELS, _OUTPUT_FORMAT),
        ),
        StepDef(
            "postprocess.segment",
            TASK_POSTPROCESS_SEGMENT,
            QUEUE_POSTPROCESS,
            (
                _DRAW_LABELS,
                Option("rle", "boolean", False, "Also give each mask as COCO run-length encoding."),
                _OUTPUT_FORMAT,
            ),
        ),
        StepDef(
            "postprocess.blur-faces",
            TASK_POSTPROCESS_BLUR,
            QUEUE_POSTPROCESS,
            (_BLUR_METHOD, _BLUR_STRENGTH, _margin(0.15), _OUTPUT_FORMAT),
        ),
        StepDef(
            "postprocess.crops",
            TASK_POSTPROCESS_CROPS,
            QUEUE_POSTPROCESS,
            (_margin(0.0), _OUTPUT_FORMAT),
        ),
        StepDef(
            "postprocess.redact",
            TASK_POSTPROCESS_REDACT,
            QUEUE_POSTPROCESS,
            (_BLUR_METHOD, _BLUR_STRENGTH, _margin(0.05), _OUTPUT_FORMAT),
        ),
    )
}

# Every option any step reads: the multipart fields POST /v1/jobs accepts besides
# file, pipeline and callback_url (the spec lists exactly these; a test checks).
ALL_OPTIONS: dict[str, Option] = {o.name: o for step in STEPS.values() for o in step.options}


class ImageInfo(TypedDict):
    width: int
    height: int


class Letterbox(TypedDict):
    """How the model input was made from the original image, to map boxes back."""

    scale: float
    pad_x: float
    pad_y: float
    width: int
    height: int


class Payload(TypedDict, total=False):
    """What travels between the steps of a chain (JSON only; files by storage key)."""

    job_id: str
    pipeline: str
    model_name: str
    options: dict[str, Any]
    input_key: str
    image: ImageInfo
    model_input_key: str
    letterbox: Letterbox
    raw: dict[str, Any]
    masks_key: str
    model: dict[str, Any]
    timings: dict[str, float]


ARTIFACT_CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".json": "application/json",
}


def artifact_content_type(name: str) -> str:
    """The content type an artifact is served with, from its extension."""
    suffix = name[name.rfind(".") :].lower() if "." in name else ""
    return ARTIFACT_CONTENT_TYPES.get(suffix, "application/octet-stream")
