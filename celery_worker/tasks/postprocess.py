"""The ``postprocess`` queue (CPU): draw, blur or crop, encode, write the result.

Images: the detections (already in original pixels) rendered on the original and
the result written with the job's success. Videos: each chunk's frames rendered
and encoded as a segment, then the finishing step (``video.finish``).

A result over ``CV_MAX_RESULT_BYTES`` fails its job (kind ``input``) instead of
going into Redis; detect-crops writes at most ``CV_MAX_CROPS`` crop files, of the
most confident detections, and says so in the result when it left some out.
"""

from __future__ import annotations

import json
import shutil
import time
from fractions import Fraction
from typing import Any

import numpy as np

from celery_worker import artifacts, masks
from celery_worker.context import WorkerContext
from celery_worker.detections import Detections
from celery_worker.errors import ChunkAlreadyDone, InputError, JobGone
from celery_worker.imaging import colour_for, decode_image, draw_detections, encode, widen
from celery_worker.render import render_frame
from celery_worker.task import chunk_step, job_step
from celery_worker.video import finish
from celery_worker.video.chunks import (
    chunk_finished,
    planned_part,
    publish_chunk,
    publish_finish,
    work_key,
)
from celery_worker.video.encode import encode_segment, thumbnail_strip
from common.contract import (
    TASK_POSTPROCESS_BLUR,
    TASK_POSTPROCESS_CROPS,
    TASK_POSTPROCESS_DETECT,
    TASK_POSTPROCESS_REDACT,
    TASK_POSTPROCESS_SEGMENT,
    TASK_POSTPROCESS_VIDEO_CHUNK,
    TASK_POSTPROCESS_VIDEO_FINISH,
    ChunkPayload,
    ImagePayload,
    PlannedVideo,
)
from common.steps import RENDER_STEMS


@job_step(TASK_POSTPROCESS_DETECT, "postprocess", final=True)
def postprocess_detect(ctx: WorkerContext, payload: ImagePayload) -> dict[str, Any]:
    """The boxes drawn on the original image; the result document."""
    return _rendered(ctx, payload, "postprocess.annotate")


@job_step(TASK_POSTPROCESS_REDACT, "postprocess", final=True)
def postprocess_redact(ctx: WorkerContext, payload: ImagePayload) -> dict[str, Any]:
    """Every detection (of the chosen classes) blurred or pixelated in the original image."""
    return _rendered(ctx, payload, "postprocess.redact")


@job_step(TASK_POSTPROCESS_BLUR, "postprocess", final=True)
def postprocess_blur(ctx: WorkerContext, payload: ImagePayload) -> dict[str, Any]:
    """Faces over the threshold, widened by the margin, hidden in the original image."""
    return _rendered(ctx, payload, "postprocess.blur-faces")


def _rendered(ctx: WorkerContext, payload: ImagePayload, step: str) -> dict[str, Any]:
    started = time.perf_counter()
    options = payload["options"]
    detections = Detections.from_json(payload["detections"])
    picture = render_frame(step, _original(ctx, payload), detections, options)
    stem = RENDER_STEMS[step]
    entry = artifacts.store_image(ctx, payload, stem, picture, options["output_format"])
    return _finish(ctx, payload, detections.to_json(), [entry], started)


@job_step(TASK_POSTPROCESS_SEGMENT, "postprocess", final=True)
def postprocess_segment(ctx: WorkerContext, payload: ImagePayload) -> dict[str, Any]:
    """Masks to original pixels: outlines (and RLE), an overlay and a label map."""
    started = time.perf_counter()
    options = payload["options"]
    width, height = payload["image"]["width"], payload["image"]["height"]
    box = payload["letterbox"]
    detections = Detections.from_json(payload["detections"])
    low_res = masks.unpack(ctx.storage.path(payload["masks_key"]).read_bytes())
    if len(low_res) != len(detections):
        raise RuntimeError(f"{len(low_res)} masks for {len(detections)} boxes")
    image = _original(ctx, payload)
    # One full-size mask at a time (memory: detections x pixels would not fit), painted
    # into the overlay and the label map; the most confident instance wins overlaps.
    labels = masks.empty_label_map(len(detections), height, width)
    polygons, areas, rles = [], [], []
    for index, (name, mask) in enumerate(zip(detections.class_name, low_res, strict=True)):
        polygons.append(masks.polygons(mask, box, width, height))
        original = masks.to_original(mask, box, width, height)
        areas.append(int(original.sum()))
        if options["rle"]:
            rles.append(masks.rle(original))
        masks.tint(image, original, colour_for(name))
        labels[original & (labels == 0)] = index + 1
    detections = detections.with_columns(polygons=tuple(polygons), area=tuple(areas))
    items = detections.to_json()
    for item, rle in zip(items, rles, strict=False):
        item["rle"] = rle
    fmt = options["output_format"]
    overlay = draw_detections(image, detections, bool(options["draw_labels"]))
    written = [
        artifacts.store_image(ctx, payload, "overlay", overlay, fmt),
        artifacts.store(ctx, payload, "labels.png", masks.encode_png(labels)),
    ]
    return _finish(ctx, payload, items, written, started)


@job_step(TASK_POSTPROCESS_CROPS, "postprocess", final=True)
def postprocess_crops(ctx: WorkerContext, payload: ImagePayload) -> dict[str, Any]:
    """Each detection cropped (widened by ``margin``) into its own image, plus crops.json.

    At most ``CV_MAX_CROPS`` crops, of the most confident detections: the job still
    succeeds past it (every detection is in the result; those without a file have no
    ``crop``), and its result and crops.json say ``truncated``.
    """
    started = time.perf_counter()
    job_id, options = payload["job_id"], payload["options"]
    width, height = payload["image"]["width"], payload["image"]["height"]
    detections = Detections.from_json(payload["detections"])
    image = _original(ctx, payload)
    items = detections.to_json()
    regions = widen(detections.xyxy, float(options["margin"]), width, height)
    boxes = [artifacts.crop_box(region) for region in regions]
    croppable = [index for index, box in enumerate(boxes) if box is not None]
    limit = ctx.settings.max_crops
    chosen = artifacts.most_confident(items, croppable, limit)
    written, manifest = [], []
    for index, (item, crop) in enumerate(zip(items, boxes, strict=True)):
        if crop is None or index not in chosen:
            continue
        x1, y1, x2, y2 = crop
        stem = artifacts.crop_stem("crop", index + 1, item["class_name"])
        entry = artifacts.store_image(
            ctx, payload, stem, image[y1:y2, x1:x2], options["output_format"]
        )
        written.append(entry)
        item["crop"] = entry["name"]
        manifest.append({"file": entry["name"], "crop_box": [x1, y1, x2, y2], **item})
    summary = {
        "written": len(manifest),
        "detections": len(items),
        "limit": limit,
        "truncated": len(croppable) > len(manifest),
    }
    document = {"job_id": job_id, **summary, "crops": manifest}
    listing = artifacts.store(ctx, payload, "crops.json", json.dumps(document, indent=1).encode())
    return _finish(ctx, payload, items, [listing, *written], started, {"crops": summary})


def _original(ctx: WorkerContext, payload: ImagePayload) -> np.ndarray:
    # Decoded again rather than read back from preprocess: writing the decoded picture
    # (2.7 MB for 1280x720) cost preprocess 9-22 ms of CPU per image here, against 1-2 ms
    # saved in postprocess (benchmarks/ceiling.py, the CPU per image of both hops).
    return decode_image(ctx.storage.path(payload["input_key"]), ctx.settings.max_image_pixels)


def _finish(
    ctx: WorkerContext,
    payload: ImagePayload,
    detections: list[dict[str, Any]],
    written: list[dict[str, Any]],
    started: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Store the result (with ``extra`` fields) and succeed the job; an oversized result
    fails it instead."""
    job_id = payload["job_id"]
    timings = {**payload.get("timings", {}), "postprocess": round(time.perf_counter() - started, 4)}
    result = {
        "job_id": job_id,
        "pipeline": payload["pipeline"],
        "image": payload["image"],
        "model": payload["model"],
        "options": payload["options"],
        "detections": detections,
        **(extra or {}),
        "artifacts": artifacts.linked(job_id, written),
        "timings": timings,
    }
    artifacts.refuse_large_result(result, ctx.settings.max_result_bytes)
    if not ctx.store.jobs.succeed(job_id, "postprocess", result, written):
        raise JobGone(job_id)
    # The steps' working files (model input, masks) are done with.
    shutil.rmtree(ctx.storage.job_dir(payload["tenant"], job_id) / "work", ignore_errors=True)
    return {"job_id": job_id, "pipeline": payload["pipeline"], "timings": timings}


@chunk_step(TASK_POSTPROCESS_VIDEO_CHUNK, "postprocess")
def postprocess_chunk(ctx: WorkerContext, payload: ChunkPayload) -> dict[str, Any]:
    """Draw or blur the chunk's frames and encode them as one H.264 segment.

    Then publish the chunk a window further on, and, after the last chunk, the
    finishing step (also when this is a redelivery of a chunk already done).
    """
    started = time.perf_counter()
    job_id, index = payload["job_id"], payload["chunk"]["index"]
    ledger = ctx.store.chunks
    if ledger.is_done(job_id, "postprocess", index):
        done = ledger.count(job_id, "postprocess")
    else:
        _render_chunk(ctx, payload)
        done = chunk_finished(ctx, payload, "postprocess", time.perf_counter() - started)
        ctx.storage.path(payload["frames_key"]).unlink(missing_ok=True)
    planned = planned_part(payload)
    publish_chunk(ctx, planned, index + planned["window"])
    if done >= payload["chunks_total"]:
        publish_finish(ctx, planned)
    return {"job_id": job_id, "pipeline": payload["pipeline"]}


def _render_chunk(ctx: WorkerContext, payload: ChunkPayload) -> None:
    job_id, chunk = payload["job_id"], payload["chunk"]
    index = chunk["index"]
    try:
        frames = np.load(ctx.storage.path(payload["frames_key"]), mmap_mode="r")
        document = json.loads(ctx.storage.path(payload["detections_key"]).read_text())
    except FileNotFoundError as exc:
        if ctx.store.chunks.is_done(job_id, "postprocess", index):
            raise ChunkAlreadyDone() from exc  # another copy of this chunk finished it
        raise InputError(f"the frames or results of chunk {index} are missing") from exc
    step, options = payload["render"], payload["options"]
    rendered = (
        render_frame(step, np.array(frame), Detections.from_json(found), options)
        for frame, found in zip(frames, document["frames"], strict=True)
    )
    thumbs = set(payload["thumbnails"])

    def keep_thumbnails() -> Any:
        for position, image in enumerate(rendered):
            if chunk["start"] + position in thumbs:
                name = f"thumb-{chunk['start'] + position:07d}.jpg"
                key = ctx.storage.key(payload["tenant"], job_id, "work", name)
                small = thumbnail_strip([image], finish.THUMBNAIL_HEIGHT)  # a strip of one
                ctx.storage.write_bytes(key, encode(small, "jpeg"))
            yield image

    with ctx.storage.atomic(work_key(ctx, payload, index, "mp4"), suffix=".mp4") as tmp:
        encode_segment(tmp, keep_thumbnails(), Fraction(payload["fps"]))


@job_step(TASK_POSTPROCESS_VIDEO_FINISH, "postprocess", final=True, continues_stage=True)
def finish_video(ctx: WorkerContext, payload: PlannedVideo) -> dict[str, Any]:
    """Join the segments, track objects across frames, write frames.json and the result."""
    return finish.finish(ctx, payload)
