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
# Videos: the preprocess task plans the frames and fans out one chain per chunk of frames
# (chunk preprocess -> chunk inference -> chunk postprocess); the last chunk sends finish.
TASK_PREPROCESS_VIDEO = "cv.preprocess.video"
TASK_PREPROCESS_VIDEO_CHUNK = "cv.preprocess.video_chunk"
TASK_INFER_VIDEO_CHUNK = "cv.inference.video_chunk"
TASK_POSTPROCESS_VIDEO_CHUNK = "cv.postprocess.video_chunk"
TASK_POSTPROCESS_VIDEO_FINISH = "cv.postprocess.video_finish"
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
# Which uploads an option applies to; a video-only option sent with an image is refused.
Media = Literal["any", "video"]
MediaKind = Literal["image", "video"]


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
        # Implied for every pipeline when the upload is a video (never listed in a pipeline).
        StepDef(
            "preprocess.video",
            TASK_PREPROCESS_VIDEO,
            QUEUE_PREPROCESS,
            (
                Option(
                    "fps",
                    "number",
                    None,
                    "Videos: frames per second to analyse (default every frame; never above "
                    "the source's rate).",
                    0.1,
                    240,
                    media="video",
                ),
                Option(
                    "max_side",
                    "integer",
                    None,
                    "Videos: downscale frames so the longer side is at most this (default: "
                    "keep the size).",
                    32,
                    8192,
                    media="video",
                ),
            ),
        ),
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
VIDEO_STEP = STEPS["preprocess.video"]

# The stem of the main artifact each postprocess step writes (``<stem>.jpg`` for an image,
# ``<stem>.mp4`` for a video).
RENDER_STEMS = {
    "postprocess.annotate": "annotated",
    "postprocess.segment": "overlay",
    "postprocess.blur-faces": "blurred",
    "postprocess.crops": "annotated",
    "postprocess.redact": "redacted",
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


class Chunk(TypedDict):
    """One chunk of a video: output frames ``start`` .. ``start + count - 1``."""

    index: int
    start: int
    count: int
    # Per output frame, the pts of the source frame it shows (from the frame plan).
    source_pts: list[int]


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
    # Videos only.
    kind: MediaKind
    video: dict[str, Any]  # the upload's probe (common.videos.VideoInfo.as_dict)
    render: str  # the pipeline's postprocess step, e.g. "postprocess.blur-faces"
    plan_key: str
    chunk: Chunk
    chunks_total: int
    frames_total: int
    fps: str  # output frame rate, an exact fraction "30000/1001"
    size: list[int]  # output frame width, height
    window: int  # chunks of the job in flight at once (fixed when it is planned)
    thumbnails: list[int]  # output frames kept for the thumbnail strip
    frames_key: str
    detections_key: str
    missing: list[int]  # chunk positions whose frame could not be decoded
    damaged: list[int]  # chunk positions FFmpeg decoded with errors


ARTIFACT_CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".json": "application/json",
    ".mp4": "video/mp4",
}


def artifact_content_type(name: str) -> str:
    """The content type an artifact is served with, from its extension."""
    suffix = name[name.rfind(".") :].lower() if "." in name else ""
    return ARTIFACT_CONTENT_TYPES.get(suffix, "application/octet-stream")
