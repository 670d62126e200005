"""The contract between the API and the workers: queues, task names, job states, payloads.

Stdlib only. The API refers to tasks by these names and never imports the task
code; the workers register their tasks under the same names (a test checks both
sides agree). Which steps exist and which options they read is ``common.steps``;
which pipelines chain them is configuration (``common.catalogue``).

Between the steps of a job travels a payload (JSON only; files by storage key):
an ``ImagePayload`` through an image's three steps, a ``VideoPayload`` into a
video's planning step, then a ``ChunkPayload`` through each chunk's three steps
and a ``PlannedVideo`` into the finishing step.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

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
# Promptable segmentation (SAM family): the pipelines' inference steps; an image's
# embedding (encoder only, kept in the embedding cache); one request's prompts answered
# from it (POST /v1/images/{id}/segment; published to CV_SAM_DECODER_QUEUE).
TASK_INFER_SAM = "cv.inference.sam"
TASK_INFER_DETECT_SAM = "cv.inference.detect_sam"
TASK_SAM_EMBED = "cv.inference.sam_embed"
TASK_SAM_PROMPT = "cv.inference.sam_prompt"
# The pipeline name of the jobs POST /v1/images/{id}/segment records (not configurable:
# one step, the decoder, on the decoder's queue).
PROMPT_PIPELINE = "sam-prompt"

# Celery routes by task-name prefix: "cv.<queue>.<what>".
TASK_ROUTES = {f"cv.{queue}.*": {"queue": queue} for queue in QUEUES}

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE_STATES: tuple[JobState, ...] = ("queued", "running")
TERMINAL_STATES: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")
JOB_STATES: tuple[JobState, ...] = ACTIVE_STATES + TERMINAL_STATES

# Records made before tenants existed belong to this tenant, as do all jobs with auth off.
DEFAULT_TENANT = "default"
Role = Literal["reader", "member", "admin"]
ROLES: tuple[Role, ...] = ("reader", "member", "admin")  # each may do what those before may
# RabbitMQ priorities (the queues are declared with x-max-priority = the highest).
Priority = Literal["low", "normal", "high"]
PRIORITIES: dict[Priority, int] = {"low": 1, "normal": 2, "high": 3}

# "sam": promptable segmentation (points and boxes in, masks out; celery_worker.sam).
ModelTask = Literal["detect", "segment", "faces", "sam"]
MODEL_TASKS: tuple[ModelTask, ...] = ("detect", "segment", "faces", "sam")
STAGES = ("preprocess", "inference", "postprocess")
MediaKind = Literal["image", "video"]


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


class JobPayload(TypedDict):
    """What the first step of every job receives from the API."""

    job_id: str
    tenant: str  # whose job: its files are under the tenant's storage folder
    priority: Priority  # what every later message of the job is published with
    pipeline: str
    model_name: str
    options: dict[str, Any]
    input_key: str


class ImagePayload(JobPayload):
    """An image job's payload; each step adds what the next one needs."""

    image: ImageInfo
    # preprocess: the model's input array, and how it was made from the original
    model_input_key: NotRequired[str]
    letterbox: NotRequired[Letterbox]
    # inference: what it found, in original pixels (celery_worker.detections), and the
    # model's report (name, version, weights sha256; no class names)
    detections: NotRequired[list[dict[str, Any]]]
    model: NotRequired[dict[str, Any]]
    # inference of segment models: the instance masks at model-input size, bit-packed
    masks_key: NotRequired[str]
    timings: NotRequired[dict[str, float]]


class VideoPayload(JobPayload):
    """What a video job's planning step receives from the API."""

    kind: Literal["video"]
    video: dict[str, Any]  # the upload's probe (common.videos.VideoInfo.as_dict)
    render: str  # the pipeline's postprocess step, e.g. "postprocess.blur-faces"


class PlannedVideo(VideoPayload):
    """A planned video: what every chunk and the finishing step share."""

    plan_key: str
    chunks_total: int
    frames_total: int
    fps: str  # output frame rate, an exact fraction "30000/1001"
    size: list[int]  # output frame width, height
    window: int  # chunks of the job in flight at once (fixed when it is planned)
    thumbnails: list[int]  # output frames kept for the thumbnail strip


class ChunkPayload(PlannedVideo):
    """One chunk of a planned video, through its three steps."""

    chunk: Chunk
    # preprocess: the decoded frames, and positions lost or damaged in decoding
    frames_key: NotRequired[str]
    missing: NotRequired[list[int]]
    damaged: NotRequired[list[int]]
    # inference: per frame, what the model found (a JSON file)
    detections_key: NotRequired[str]
    timings: NotRequired[dict[str, float]]


def artifact_href(job_id: str, name: str) -> str:
    return f"/v1/jobs/{job_id}/artifacts/{name}"


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
