"""The ``preprocess`` queue (CPU): decode, validate, orient, convert, resize.

Images: the model's input array. Videos: the frame plan and its chunks, then each
chunk's decoded frames.
"""

from __future__ import annotations

import io
import time

import numpy as np

from celery_worker.context import WorkerContext
from celery_worker.errors import ChunkAlreadyDone, InputError, ModelUnavailable
from celery_worker.imaging import decode_image, faces_input, letterbox
from celery_worker.models import rectangular_input
from celery_worker.task import chunk_step, job_step
from celery_worker.tasks.sam import identity
from celery_worker.video.chunks import chunk_finished, plan_chunks, save_array, work_key
from celery_worker.video.decode import decode_chunk
from celery_worker.video.demux import VideoDecodeError
from common.contract import (
    TASK_PREPROCESS_IMAGE,
    TASK_PREPROCESS_VIDEO,
    TASK_PREPROCESS_VIDEO_CHUNK,
    ChunkPayload,
    ImagePayload,
    Letterbox,
    PlannedVideo,
    VideoPayload,
)

MODEL_INPUT = "model-input.npy"


@job_step(TASK_PREPROCESS_IMAGE, "preprocess")
def preprocess_image(ctx: WorkerContext, payload: ImagePayload) -> ImagePayload:
    """Decode the upload (EXIF orientation applied) and write the model's input array.

    detect, segment: BGR, letterboxed to ``image_size`` exactly as Ultralytics does it.
    faces: RGB, downscaled to at most ``imaging.FACES_MAX_SIDE``.
    sam (the SAM family, also in detect-sam): the picture itself (BGR).
    The original size and the transform travel on, to map results back.
    """
    job_id = payload["job_id"]
    image = decode_image(ctx.storage.path(payload["input_key"]), ctx.settings.max_image_pixels)
    height, width = image.shape[:2]
    spec = ctx.models.specs.get(payload["model_name"])
    if spec is None:
        raise ModelUnavailable(f"no model named {payload['model_name']!r} on this worker")
    if spec.task == "faces":
        model_input, scale = faces_input(image)
        box: Letterbox = {
            "scale": scale,
            "pad_x": 0.0,
            "pad_y": 0.0,
            "width": model_input.shape[1],
            "height": model_input.shape[0],
        }
    elif spec.task == "sam":
        # The SAM family letterboxes to 1024 itself: it gets the picture as it is.
        model_input, box = image, identity(width, height)
    else:
        auto = rectangular_input(spec.weights)
        model_input, box = letterbox(image, int(payload["options"]["image_size"]), auto=auto)
    key = ctx.storage.key(payload["tenant"], job_id, "work", MODEL_INPUT)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(model_input))
    ctx.storage.write_bytes(key, buffer.getvalue())
    return {
        **payload,
        "image": {"width": width, "height": height},
        "model_input_key": key,
        "letterbox": box,
    }


@job_step(TASK_PREPROCESS_VIDEO, "preprocess", finishes_step=False, continues_stage=True)
def preprocess_video(ctx: WorkerContext, payload: VideoPayload) -> PlannedVideo:
    """Plan the output frames (constant rate, decimated), split them into chunks, start them.

    Only packets are read here (no decoding), so an hour of video plans in seconds.
    """
    if payload["model_name"] not in ctx.models.specs:
        raise ModelUnavailable(f"no model named {payload['model_name']!r} on this worker")
    return plan_chunks(ctx, payload)


@chunk_step(TASK_PREPROCESS_VIDEO_CHUNK, "preprocess")
def preprocess_chunk(ctx: WorkerContext, payload: ChunkPayload) -> ChunkPayload:
    """Decode the chunk's frames (BGR, upright, output size) into one array file."""
    started = time.perf_counter()
    job_id, chunk = payload["job_id"], payload["chunk"]
    ledger = ctx.store.chunks
    if ledger.is_done(job_id, "postprocess", chunk["index"]):
        raise ChunkAlreadyDone()
    width, height = payload["size"]
    try:
        decoded = decode_chunk(
            ctx.storage.path(payload["input_key"]),
            chunk["source_pts"],
            int(payload["video"].get("rotation") or 0),
            (width, height),
            max_pixels=ctx.settings.max_image_pixels,
        )
    except FileNotFoundError as exc:
        raise InputError("the uploaded video is missing from storage") from exc
    except VideoDecodeError as exc:
        raise InputError(str(exc)) from exc
    frames_key = work_key(ctx, payload, chunk["index"], "frames.npy")
    save_array(ctx, frames_key, decoded.frames)
    if ledger.is_done(job_id, "postprocess", chunk["index"]):
        # A late copy of a chunk another copy finished meanwhile: leave no frames behind.
        ctx.storage.path(frames_key).unlink(missing_ok=True)
        raise ChunkAlreadyDone()
    chunk_finished(ctx, payload, "preprocess", time.perf_counter() - started)
    return {
        **payload,
        "frames_key": frames_key,
        "missing": list(decoded.missing),
        "damaged": list(decoded.damaged),
    }
