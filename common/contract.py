"""The contract between the API and the workers: queues, task names, pipelines, payloads.

Stdlib only. The API refers to tasks by these names and never imports the task
code; the workers register their tasks under the same names. A test checks that
both sides agree and that the OpenAPI spec offers exactly these pipelines and
options.

A pipeline is data: its steps (task name + queue, run in order as a Celery
chain) and its options (type, bounds, default). Between steps travels a
``Payload`` dict (JSON only): the job id, the options, storage keys of the files
the previous step wrote, and what the next step needs to map results back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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

# Model names the workers' registry knows; pipelines name the one they need.
MODEL_YOLO_DETECT = "yolo-detect"
MODEL_YOLO_SEGMENT = "yolo-segment"
MODEL_MTCNN = "mtcnn-faces"

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
class Step:
    """One link of a pipeline's chain: a registered task and the queue it runs on."""

    name: str
    task: str
    queue: str


@dataclass(frozen=True)
class Pipeline:
    """A named chain of steps with the options it accepts and the model it needs."""

    name: str
    description: str
    model: str
    steps: tuple[Step, ...]
    options: tuple[Option, ...] = field(default=())

    def defaults(self) -> dict[str, Any]:
        return {option.name: option.default for option in self.options}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_OUTPUT_FORMAT = Option(
    "output_format", "string", "jpeg", "Image format of the artifact.", enum=("jpeg", "png")
)
# The YOLO options detect and segment share.
_YOLO_OPTIONS = (
    Option("confidence", "number", 0.25, "Minimum detection confidence.", 0, 1),
    Option("iou", "number", 0.7, "IoU threshold of non-maximum suppression.", 0, 1),
    Option("max_detections", "integer", 300, "Most boxes kept.", 1, 1000),
    Option("classes", "class-list", None, "Class ids to keep (default all)."),
    Option("image_size", "integer", 640, "Model input size (multiple of 32).", 32, 2048),
    Option("draw_labels", "boolean", True, "Write class and score beside boxes."),
)

PIPELINES: dict[str, Pipeline] = {
    pipeline.name: pipeline
    for pipeline in (
        Pipeline(
            name="detect",
            description=(
                "Object detection with an Ultralytics YOLO model: boxes in original image "
                "pixels with class and confidence, and an annotated image."
            ),
            model=MODEL_YOLO_DETECT,
            steps=(
                Step("preprocess", TASK_PREPROCESS_IMAGE, QUEUE_PREPROCESS),
                Step("inference", TASK_INFER_DETECT, QUEUE_INFERENCE),
                Step("postprocess", TASK_POSTPROCESS_DETECT, QUEUE_POSTPROCESS),
            ),
            options=(*_YOLO_OPTIONS, _OUTPUT_FORMAT),
        ),
        Pipeline(
            name="segment",
            description=(
                "Instance segmentation with an Ultralytics YOLO segmentation model: per instance "
                "the box, class, score and mask outline (polygons, optional RLE) in original "
                "image pixels; an overlay image and a label map (instance id per pixel)."
            ),
            model=MODEL_YOLO_SEGMENT,
            steps=(
                Step("preprocess", TASK_PREPROCESS_IMAGE, QUEUE_PREPROCESS),
                Step("inference", TASK_INFER_SEGMENT, QUEUE_INFERENCE),
                Step("postprocess", TASK_POSTPROCESS_SEGMENT, QUEUE_POSTPROCESS),
            ),
            options=(
                *_YOLO_OPTIONS,
                Option("rle", "boolean", False, "Also give each mask as COCO run-length encoding."),
                _OUTPUT_FORMAT,
            ),
        ),
        Pipeline(
            name="blur-faces",
            description=(
                "Face detection with MTCNN (facenet-pytorch), then every face blurred or "
                "pixelated in the original image."
            ),
            model=MODEL_MTCNN,
            steps=(
                Step("preprocess", TASK_PREPROCESS_IMAGE, QUEUE_PREPROCESS),
                Step("inference", TASK_INFER_FACES, QUEUE_INFERENCE),
                Step("postprocess", TASK_POSTPROCESS_BLUR, QUEUE_POSTPROCESS),
            ),
            options=(
                Option("min_confidence", "number", 0.9, "Minimum face probability.", 0, 1),
                Option(
                    "blur_method",
                    "string",
                    "gaussian",
                    "How faces are hidden.",
                    enum=("gaussian", "pixelate"),
                ),
                Option("blur_strength", "integer", 50, "1 (light) to 100 (heavy).", 1, 100),
                Option("margin", "number", 0.15, "Widen each face box by this fraction.", 0, 1),
                _OUTPUT_FORMAT,
            ),
        ),
    )
}


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
}


def artifact_content_type(name: str) -> str:
    """The content type an artifact is served with, from its extension."""
    suffix = name[name.rfind(".") :].lower() if "." in name else ""
    return ARTIFACT_CONTENT_TYPES.get(suffix, "application/octet-stream")
