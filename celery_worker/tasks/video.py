"""Video jobs on all three queues: plan and split, decode, infer, render, assemble.

See ``celery_worker.chunks`` for how the chunks are published and joined. Each chunk
step writes whole files under fixed names, so a chunk redelivered after its worker
died (or published twice) is redone, and counted, exactly once.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from celery_worker.chunks import (
    base_of,
    chunk_finished,
    publish_chunk,
    publish_finish,
    read_plan,
    save_array,
    work_key,
    write_chunk_plan,
    write_plan,
)
from celery_worker.context import WorkerContext
from celery_worker.errors import ChunkAlreadyDone, InputError, JobGone, ModelUnavailable
from celery_worker.framewise import detect_frames
from celery_worker.imaging import encode, safe_name, widen
from celery_worker.render import render_frame
from celery_worker.steps import chunk_step, job_step
from celery_worker.tracking import Tracker, TrackSummary, tag_tracks
from celery_worker.video import (
    VideoDecodeError,
    chunk_frames_for,
    chunk_ranges_at_keyframes,
    concat_segments,
    decode_chunk,
    encode_segment,
    output_size,
    plan_frames,
    thumbnail_strip,
)
from common.contract import (
    RENDER_STEMS,
    STAGES,
    TASK_INFER_VIDEO_CHUNK,
    TASK_POSTPROCESS_VIDEO_CHUNK,
    TASK_POSTPROCESS_VIDEO_FINISH,
    TASK_PREPROCESS_VIDEO,
    TASK_PREPROCESS_VIDEO_CHUNK,
    Payload,
    artifact_content_type,
    artifact_href,
)

THUMBNAILS = 8
THUMBNAIL_HEIGHT = 96


# --- preprocess -----------------------------------------------------------------------


@job_step(TASK_PREPROCESS_VIDEO, "preprocess", finishes_step=False, continues_stage=True)
def preprocess_video(ctx: WorkerContext, payload: Payload) -> Payload:
    """Plan the output frames (constant rate, decimated), split them into chunks, start them.

    Only packets are read here (no decoding), so an hour of video plans in seconds.
    """
    job_id, options, video = payload["job_id"], payload["options"], payload["video"]
    if payload["model_name"] not in ctx.models.specs:
        raise ModelUnavailable(f"no model named {payload['model_name']!r} on this worker")
    try:
        plan = plan_frames(
            ctx.storage.path(payload["input_key"]),
            options.get("fps"),
            ctx.settings.max_video_seconds,
        )
    except FileNotFoundError as exc:
        raise InputError("the uploaded video is missing from storage") from exc
    except VideoDecodeError as exc:
        raise InputError(str(exc)) from exc
    total = len(plan.source_pts)
    if total == 0:
        raise InputError("the video has no frame to analyse")
    width, height = output_size(video["width"], video["height"], options.get("max_side"))
    settings = ctx.settings
    per_chunk = chunk_frames_for(
        width, height, settings.video_chunk_frames, settings.video_chunk_bytes
    )
    ranges = chunk_ranges_at_keyframes(plan.source_pts, per_chunk, plan.keyframes)
    plan_key = ctx.storage.key(job_id, "work", "plan.json")
    write_plan(
        ctx,
        plan_key,
        {
            "fps": str(plan.fps),
            "size": [width, height],
            "frames": total,
            "chunks": ranges,
            "source_pts": plan.source_pts,
            "source_times": plan.source_times,
            "declared_frames": plan.declared_frames,
            "found_frames": plan.found_frames,
            "warnings": plan.warnings,
        },
    )
    if not ctx.store.video_planned(job_id, total, len(ranges)):
        raise JobGone(job_id)
    for index, (start, count) in enumerate(ranges):
        write_chunk_plan(ctx, job_id, index, start, plan.source_pts[start : start + count])
    base: Payload = {
        **base_of(payload),
        "plan_key": plan_key,
        "chunks_total": len(ranges),
        "frames_total": total,
        "fps": str(plan.fps),
        "size": [width, height],
        # Fixed for the job here, so every worker publishes the same next chunks.
        "window": max(1, settings.video_window_chunks),
        "thumbnails": _spread(total, THUMBNAILS),
    }
    for index in range(min(base["window"], len(ranges))):
        publish_chunk(ctx, base, index)
    return base


def _spread(total: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``total`` frames (fewer for short videos)."""
    return sorted({min(total - 1, int((k + 0.5) * total / count)) for k in range(count)})


@chunk_step(TASK_PREPROCESS_VIDEO_CHUNK, "preprocess")
def preprocess_chunk(ctx: WorkerContext, payload: Payload) -> Payload:
    """Decode the chunk's frames (BGR, upright, output size) into one array file."""
    started = time.perf_counter()
    job_id, chunk = payload["job_id"], payload["chunk"]
    if ctx.store.chunk_is_done(job_id, "postprocess", chunk["index"]):
        raise ChunkAlreadyDone()
    width, height = payload["size"]
    try:
        decoded = decode_chunk(
            ctx.storage.path(payload["input_key"]),
            chunk["source_pts"],
            int(payload["video"].get("rotation") or 0),
            (width, height),
        )
    except FileNotFoundError as exc:
        raise InputError("the uploaded video is missing from storage") from exc
    except VideoDecodeError as exc:
        raise InputError(str(exc)) from exc
    frames_key = work_key(ctx, job_id, chunk["index"], "frames.npy")
    save_array(ctx, frames_key, decoded.frames)
    if ctx.store.chunk_is_done(job_id, "postprocess", chunk["index"]):
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


# --- inference ------------------------------------------------------------------------


@chunk_step(TASK_INFER_VIDEO_CHUNK, "inference")
def infer_chunk(ctx: WorkerContext, payload: Payload) -> Payload:
    """The model on every decoded frame of the chunk, in batches; results to a JSON file."""
    started = time.perf_counter()
    job_id, chunk = payload["job_id"], payload["chunk"]
    index = chunk["index"]
    if ctx.store.chunk_is_done(job_id, "postprocess", index):
        raise ChunkAlreadyDone()
    detections_key = work_key(ctx, job_id, index, "json")
    out: Payload = {**payload, "detections_key": detections_key}
    if ctx.store.chunk_is_done(job_id, "inference", index) and _exists(ctx, detections_key):
        chunk_finished(ctx, payload, "inference", 0.0)  # counted once; marks the stage
        return out  # redelivered after it finished: pass the chain on
    loaded = ctx.models.get(payload["model_name"])
    try:
        frames = np.load(ctx.storage.path(payload["frames_key"]), mmap_mode="r")
    except FileNotFoundError as exc:
        if ctx.store.chunk_is_done(job_id, "postprocess", index):
            raise ChunkAlreadyDone() from exc  # another copy of this chunk finished it
        raise InputError(f"the decoded frames of chunk {index} are missing from storage") from exc
    missing = set(payload.get("missing") or [])
    positions = [p for p in range(chunk["count"]) if p not in missing]
    found = detect_frames(loaded, [frames[p] for p in positions], payload["options"])
    per_position = dict(zip(positions, found, strict=True))
    document = {
        "model": {k: v for k, v in loaded.info.items() if k != "names"},
        "missing": sorted(missing),
        "damaged": sorted(payload.get("damaged") or []),
        "frames": [per_position.get(p, []) for p in range(chunk["count"])],
    }
    ctx.storage.write_bytes(detections_key, json.dumps(document).encode())
    chunk_finished(ctx, payload, "inference", time.perf_counter() - started)
    return out


def _exists(ctx: WorkerContext, key: str) -> bool:
    return ctx.storage.path(key).is_file()


# --- postprocess ----------------------------------------------------------------------


@chunk_step(TASK_POSTPROCESS_VIDEO_CHUNK, "postprocess")
def postprocess_chunk(ctx: WorkerContext, payload: Payload) -> Payload:
    """Draw or blur the chunk's frames and encode them as one H.264 segment.

    Then publish the chunk a window further on, and, after the last chunk, the
    finishing step (also when this is a redelivery of a chunk already done).
    """
    started = time.perf_counter()
    job_id, chunk = payload["job_id"], payload["chunk"]
    index = chunk["index"]
    store = ctx.store
    if store.chunk_is_done(job_id, "postprocess", index):
        done = store.chunks_done(job_id, "postprocess")
    else:
        _render_chunk(ctx, payload)
        done = chunk_finished(ctx, payload, "postprocess", time.perf_counter() - started)
        ctx.storage.path(payload["frames_key"]).unlink(missing_ok=True)
    base = base_of(payload)
    publish_chunk(ctx, base, index + base["window"])
    if done >= payload["chunks_total"]:
        publish_finish(ctx, base)
    return {"job_id": job_id, "pipeline": payload["pipeline"]}


def _render_chunk(ctx: WorkerContext, payload: Payload) -> None:
    job_id, chunk = payload["job_id"], payload["chunk"]
    index = chunk["index"]
    try:
        frames = np.load(ctx.storage.path(payload["frames_key"]), mmap_mode="r")
        document = json.loads(ctx.storage.path(payload["detections_key"]).read_text())
    except FileNotFoundError as exc:
        if ctx.store.chunk_is_done(job_id, "postprocess", index):
            raise ChunkAlreadyDone() from exc  # another copy of this chunk finished it
        raise InputError(f"the frames or results of chunk {index} are missing") from exc
    step, options = payload["render"], payload["options"]
    rendered = (
        render_frame(step, np.array(frame), detections, options)
        for frame, detections in zip(frames, document["frames"], strict=True)
    )
    thumbs = set(payload["thumbnails"])

    def keep_thumbnails() -> Any:
        for position, image in enumerate(rendered):
            if chunk["start"] + position in thumbs:
                key = ctx.storage.key(job_id, "work", f"thumb-{chunk['start'] + position:07d}.jpg")
                small = thumbnail_strip([image], THUMBNAIL_HEIGHT)  # a strip of one
                ctx.storage.write_bytes(key, encode(small, "jpeg"))
            yield image

    with ctx.storage.atomic(work_key(ctx, job_id, index, "mp4"), suffix=".mp4") as tmp:
        encode_segment(tmp, keep_thumbnails(), Fraction(payload["fps"]))


@job_step(TASK_POSTPROCESS_VIDEO_FINISH, "postprocess", final=True, continues_stage=True)
def finish_video(ctx: WorkerContext, payload: Payload) -> Payload:
    """Join the segments, track objects across frames, write frames.json and the result."""
    started = time.perf_counter()
    job_id = payload["job_id"]
    plan = read_plan(ctx, payload["plan_key"])
    fps = Fraction(plan["fps"])
    total = int(plan["frames"])
    chunks = len(plan["chunks"])
    render = payload["render"]
    artifacts: list[dict[str, Any]] = []

    segments = [ctx.storage.path(work_key(ctx, job_id, i, "mp4")) for i in range(chunks)]
    absent = [i for i, path in enumerate(segments) if not path.is_file()]
    if absent:
        raise RuntimeError(f"segments of chunks {absent[:10]} are missing")
    video_name = f"{RENDER_STEMS[render]}.mp4"
    video_path = ctx.storage.artifact_path(job_id, video_name)
    video_path.parent.mkdir(parents=True, exist_ok=True)
    written = concat_segments(segments, video_path, fps)
    if written != total:
        raise RuntimeError(f"the output video has {written} frames, the plan {total}")
    artifacts.append(_artifact(video_name, video_path))

    frames_name = "frames.json"
    model, summary, tracks, missing, damaged = _write_frames(ctx, payload, plan, frames_name)
    if len(missing) == total:
        raise InputError("no frame of the video could be decoded")
    artifacts.append(_artifact(frames_name, ctx.storage.artifact_path(job_id, frames_name)))

    read = [
        cv2.imread(str(ctx.storage.path(ctx.storage.key(job_id, "work", f"thumb-{i:07d}.jpg"))))
        for i in payload["thumbnails"]
    ]
    thumbs = [t for t in read if t is not None]
    if thumbs and len(thumbs) == len(read):
        strip = ctx.storage.artifact_path(job_id, "thumbnails.jpg")
        ctx.storage.write_bytes(
            ctx.storage.key(job_id, "artifacts", strip.name),
            encode(thumbnail_strip(thumbs, THUMBNAIL_HEIGHT), "jpeg"),
        )
        artifacts.append(_artifact(strip.name, strip))
    if render == "postprocess.crops":
        artifacts.extend(_track_crops(ctx, payload, plan, tracks))

    record = ctx.store.get(job_id) or {}
    timings = {stage: round(float(record.get(f"busy:{stage}") or 0), 3) for stage in STAGES}
    timings["postprocess"] = round(timings["postprocess"] + time.perf_counter() - started, 3)
    width, height = payload["size"]
    result = {
        "job_id": job_id,
        "pipeline": payload["pipeline"],
        "kind": "video",
        "image": {"width": width, "height": height},
        "video": {
            "input": payload["video"],
            "fps": float(fps),
            "frame_rate": str(fps),
            "frames": total,
            "duration": round(total / float(fps), 6),
            "width": width,
            "height": height,
            "chunks": chunks,
            "frames_missing": missing,
            "frames_damaged": damaged,
            "warnings": plan["warnings"],
        },
        "model": model,
        "options": payload["options"],
        "frames": frames_name,
        "tracks": tracks,
        "summary": summary,
        "artifacts": [{**a, "href": artifact_href(job_id, a["name"])} for a in artifacts],
        "timings": timings,
    }
    if not ctx.store.succeed(job_id, "postprocess", result, artifacts):
        raise JobGone(job_id)
    shutil.rmtree(ctx.storage.job_dir(job_id) / "work", ignore_errors=True)
    return {"job_id": job_id, "pipeline": payload["pipeline"], "timings": timings}


def _write_frames(
    ctx: WorkerContext, payload: Payload, plan: dict[str, Any], name: str
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], list[int], list[int]]:
    """The artifact ``name`` (frames.json): every frame in order, written as it goes, with
    a track id on each detection.

    Returns the model info, the track summary, the tracks, and the frames that could not
    be decoded or were decoded with errors.
    """
    job_id = payload["job_id"]
    fps = Fraction(plan["fps"])
    model: dict[str, Any] = {}
    missing: set[int] = set()
    damaged: set[int] = set()

    def frames() -> Iterator[tuple[int, float, list[dict[str, Any]]]]:
        for index, (start, _count) in enumerate(plan["chunks"]):
            document = json.loads(
                ctx.storage.path(work_key(ctx, job_id, index, "json")).read_text()
            )
            if not model:
                model.update(document["model"])
            missing.update(start + p for p in document["missing"])
            damaged.update(start + p for p in document["damaged"])
            for position, detections in enumerate(document["frames"]):
                frame = start + position
                yield frame, round(float(frame / fps), 6), detections

    summary = TrackSummary()
    key = ctx.storage.key(job_id, "artifacts", name)
    with ctx.storage.atomic(key) as tmp, tmp.open("w") as out:
        out.write("[")
        for frame, time_s, detections in tag_tracks(frames(), Tracker(float(fps))):
            summary.add(frame, time_s, detections)
            entry = {
                "index": frame,
                "time": time_s,
                "source_time": round(plan["source_times"][frame], 6),
                "decoded": frame not in missing,
                "damaged": frame in damaged,
                "detections": detections,
            }
            out.write(("," if frame else "") + "\n" + json.dumps(entry))
        out.write("\n]\n")
    return model, summary.summary(), summary.tracks(), sorted(missing), sorted(damaged)


def _track_crops(
    ctx: WorkerContext, payload: Payload, plan: dict[str, Any], tracks: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """detect-crops on a video: one crop per track, from its most confident detection."""
    job_id, options = payload["job_id"], payload["options"]
    width, height = payload["size"]
    rotation = int(payload["video"].get("rotation") or 0)
    artifacts, manifest = [], []
    for track in tracks:
        best = track["best"]
        frame = best["frame"]
        decoded = decode_chunk(
            ctx.storage.path(payload["input_key"]),
            [plan["source_pts"][frame]],
            rotation,
            (width, height),
        )
        if decoded.missing:
            continue
        box = widen(np.asarray([best["box"]]), float(options["margin"]), width, height)[0]
        x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
        x2, y2 = int(np.ceil(box[2])), int(np.ceil(box[3]))
        if x2 - x1 < 1 or y2 - y1 < 1:
            continue
        fmt = options["output_format"]
        name = f"crop-track-{track['id']:04d}-{safe_name(track['class_name'])}."
        name += "png" if fmt == "png" else "jpg"
        data = encode(decoded.frames[0][y1:y2, x1:x2], fmt)
        ctx.storage.write_bytes(ctx.storage.key(job_id, "artifacts", name), data)
        artifacts.append(
            {"name": name, "content_type": artifact_content_type(name), "bytes": len(data)}
        )
        manifest.append({"file": name, "crop_box": [x1, y1, x2, y2], "track": track})
    listing = json.dumps({"job_id": job_id, "crops": manifest}, indent=1).encode()
    ctx.storage.write_bytes(ctx.storage.key(job_id, "artifacts", "crops.json"), listing)
    return [
        {"name": "crops.json", "content_type": "application/json", "bytes": len(listing)},
        *artifacts,
    ]


def _artifact(name: str, path: Path) -> dict[str, Any]:
    return {"name": name, "content_type": artifact_content_type(name), "bytes": path.stat().st_size}
