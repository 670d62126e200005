"""Finishing a video job: one MP4 from the segments, tracks across all frames, the result.

Runs once, after the last chunk left postprocess: joins the chunks' segments (a
remux), feeds every frame's detections in order to ByteTrack while writing
``frames.json``, makes the thumbnail strip and, for ``detect-crops``, one crop
per track; then writes the result with the job's success.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import cv2
import numpy as np

from celery_worker import artifacts
from celery_worker.context import WorkerContext
from celery_worker.detections import Detections
from celery_worker.errors import InputError, JobGone
from celery_worker.imaging import encode, widen
from celery_worker.video.chunks import read_plan, work_key
from celery_worker.video.decode import decode_chunk
from celery_worker.video.encode import concat_segments, thumbnail_strip
from celery_worker.video.tracking import Frame, Tracker, TrackSummary, tag_tracks
from common.contract import STAGES, PlannedVideo
from common.steps import RENDER_STEMS

THUMBNAIL_HEIGHT = 96
FRAMES_ARTIFACT = "frames.json"


def finish(ctx: WorkerContext, payload: PlannedVideo) -> dict[str, Any]:
    """Join, track, describe; mark the job succeeded with its result (``JobGone`` if not)."""
    started = time.perf_counter()
    job_id = payload["job_id"]
    plan = read_plan(ctx, payload["plan_key"])
    fps = Fraction(plan["fps"])
    total = int(plan["frames"])
    chunks = len(plan["chunks"])
    render = payload["render"]
    written: list[dict[str, Any]] = []

    segments = [ctx.storage.path(work_key(ctx, payload, i, "mp4")) for i in range(chunks)]
    absent = [i for i, path in enumerate(segments) if not path.is_file()]
    if absent:
        raise RuntimeError(f"segments of chunks {absent[:10]} are missing")
    tenant = payload["tenant"]
    video_path = ctx.storage.artifact_path(tenant, job_id, f"{RENDER_STEMS[render]}.mp4")
    video_path.parent.mkdir(parents=True, exist_ok=True)
    frames_written = concat_segments(segments, video_path, fps)
    if frames_written != total:
        raise RuntimeError(f"the output video has {frames_written} frames, the plan {total}")
    written.append(artifacts.describe(video_path))

    model, summary, tracks, missing, damaged = _write_frames(ctx, payload, plan)
    if len(missing) == total:
        raise InputError("no frame of the video could be decoded")
    frames_path = ctx.storage.artifact_path(tenant, job_id, FRAMES_ARTIFACT)
    written.append(artifacts.describe(frames_path))
    strip = _thumbnails(ctx, payload)
    if strip is not None:
        written.append(strip)
    crops: dict[str, Any] | None = None
    if render == "postprocess.crops":
        entries, crops = _track_crops(ctx, payload, plan, tracks)
        written.extend(entries)

    record = ctx.store.jobs.get(job_id) or {}
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
        "frames": FRAMES_ARTIFACT,
        "tracks": tracks,
        "summary": summary,
        "artifacts": artifacts.linked(job_id, written),
        "timings": timings,
    }
    if crops is not None:
        result["crops"] = crops
    artifacts.refuse_large_result(result, ctx.settings.max_result_bytes)
    if not ctx.store.jobs.succeed(job_id, "postprocess", result, written):
        raise JobGone(job_id)
    shutil.rmtree(ctx.storage.job_dir(tenant, job_id) / "work", ignore_errors=True)
    return {"job_id": job_id, "pipeline": payload["pipeline"], "timings": timings}


def _write_frames(
    ctx: WorkerContext, payload: PlannedVideo, plan: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], list[int], list[int]]:
    """The artifact frames.json: every frame in order, written as it goes, with a track id
    on each detection.

    Returns the model info, the track summary, the tracks, and the frames that could not
    be decoded or were decoded with errors.
    """
    job_id = payload["job_id"]
    fps = Fraction(plan["fps"])
    model: dict[str, Any] = {}
    missing: set[int] = set()
    damaged: set[int] = set()

    def frames() -> Iterator[Frame]:
        for index, (start, _count) in enumerate(plan["chunks"]):
            document = json.loads(
                ctx.storage.path(work_key(ctx, payload, index, "json")).read_text()
            )
            if not model:
                model.update(document["model"])
            missing.update(start + p for p in document["missing"])
            damaged.update(start + p for p in document["damaged"])
            for position, found in enumerate(document["frames"]):
                frame = start + position
                yield frame, round(float(frame / fps), 6), Detections.from_json(found)

    summary = TrackSummary()
    key = ctx.storage.key(payload["tenant"], job_id, "artifacts", FRAMES_ARTIFACT)
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
                "detections": detections.to_json(),
            }
            out.write(("," if frame else "") + "\n" + json.dumps(entry))
        out.write("\n]\n")
    return model, summary.summary(), summary.tracks(), sorted(missing), sorted(damaged)


def _thumbnails(ctx: WorkerContext, payload: PlannedVideo) -> dict[str, Any] | None:
    """thumbnails.jpg from the frames the chunks kept; None if any of them is missing."""
    job_id = payload["job_id"]
    work = ctx.storage.job_dir(payload["tenant"], job_id) / "work"
    read = [cv2.imread(str(work / f"thumb-{i:07d}.jpg")) for i in payload["thumbnails"]]
    thumbs = [t for t in read if t is not None]
    if not thumbs or len(thumbs) != len(read):
        return None
    strip = thumbnail_strip(thumbs, THUMBNAIL_HEIGHT)
    return artifacts.store(ctx, payload, "thumbnails.jpg", encode(strip, "jpeg"))


def _track_crops(
    ctx: WorkerContext, payload: PlannedVideo, plan: dict[str, Any], tracks: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """detect-crops on a video: one crop per track, from its most confident detection; at
    most ``CV_MAX_CROPS``, of the most confident tracks. The artifacts, and what was left
    out (the result's and crops.json's ``crops`` summary)."""
    job_id, options = payload["job_id"], payload["options"]
    width, height = payload["size"]
    rotation = int(payload["video"].get("rotation") or 0)
    written, manifest = [], []
    chosen = artifacts.most_confident(
        [t["best"] for t in tracks], range(len(tracks)), ctx.settings.max_crops
    )
    for index, track in enumerate(tracks):
        if index not in chosen:
            continue
        best = track["best"]
        decoded = decode_chunk(
            ctx.storage.path(payload["input_key"]),
            [plan["source_pts"][best["frame"]]],
            rotation,
            (width, height),
            max_pixels=ctx.settings.max_image_pixels,
        )
        if decoded.missing:
            continue
        box = widen(np.asarray([best["box"]]), float(options["margin"]), width, height)[0]
        crop = artifacts.crop_box(box)
        if crop is None:
            continue
        x1, y1, x2, y2 = crop
        stem = artifacts.crop_stem("crop-track", track["id"], track["class_name"])
        image = decoded.frames[0][y1:y2, x1:x2]
        entry = artifacts.store_image(ctx, payload, stem, image, options["output_format"])
        written.append(entry)
        manifest.append({"file": entry["name"], "crop_box": [x1, y1, x2, y2], "track": track})
    summary = {
        "written": len(manifest),
        "detections": len(tracks),
        "limit": ctx.settings.max_crops,
        "truncated": len(chosen) < len(tracks),
    }
    listing = json.dumps({"job_id": job_id, **summary, "crops": manifest}, indent=1).encode()
    return [artifacts.store(ctx, payload, "crops.json", listing), *written], summary
