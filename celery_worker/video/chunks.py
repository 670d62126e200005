"""A video job's chunks: cut, stored, published and counted.

A video job runs as: ``preprocess.video`` (``plan_chunks``: plan the frames, cut them
into chunks) -> one chain per chunk (``common.chains.build_chunk_chain``:
``preprocess.video_chunk`` -> ``inference.video_chunk`` -> ``postprocess.video_chunk``)
-> ``postprocess.video_finish`` (``video.finish``).

- At most ``CV_VIDEO_WINDOW_CHUNKS`` chunks of a job are in flight: the planning step
  publishes the first ones, and each chunk that leaves postprocess publishes the one
  a window further on. Decoded frames on disk stay bounded, and several inference
  workers can still share one video.
- Every chunk step counts its chunk done in Redis, once per chunk index however often
  it ran (``ChunkLedger.done``); whoever completes a stage's last chunk marks the
  stage finished, and the last chunk out of postprocess publishes the finishing step.
- A publish is recorded after it happened, so a worker killed in between publishes
  twice, never zero times; the chunk steps are idempotent (whole files under fixed
  names; a copy that finds its chunk finished stops), so twice is harmless.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from celery_worker.context import WorkerContext
from celery_worker.errors import InputError, JobGone
from celery_worker.video.demux import VideoDecodeError
from celery_worker.video.plan import output_size, plan_frames
from common.celery_app import HARD_LIMIT_GRACE_SECONDS
from common.chains import build_chunk_chain, rank
from common.contract import (
    QUEUE_POSTPROCESS,
    TASK_POSTPROCESS_VIDEO_FINISH,
    Chunk,
    ChunkPayload,
    JobPayload,
    PlannedVideo,
    VideoPayload,
)

FINISH = -1  # the finishing step's entry among a job's published chunks
# Time the finishing step may take per frame on top of the step limit: tracking took
# 0.54 ms a frame with 8 objects; 10x that leaves room for crowded scenes and frames.json.
FINISH_SECONDS_PER_FRAME = 0.005
THUMBNAILS = 8

# What every chunk's payload carries from the planning step.
PLANNED_KEYS = PlannedVideo.__required_keys__ | PlannedVideo.__optional_keys__


def plan_chunks(ctx: WorkerContext, payload: VideoPayload) -> PlannedVideo:
    """Plan the output frames (constant rate, decimated), cut them into chunks, store the
    plan, and publish the first window of chunks; returns what every chunk shares."""
    job_id, options, video = payload["job_id"], payload["options"], payload["video"]
    settings = ctx.settings
    try:
        plan = plan_frames(
            ctx.storage.path(payload["input_key"]), options.get("fps"), settings.max_video_seconds
        )
    except FileNotFoundError as exc:
        raise InputError("the uploaded video is missing from storage") from exc
    except VideoDecodeError as exc:
        raise InputError(str(exc)) from exc
    total = len(plan.source_pts)
    if total == 0:
        raise InputError("the video has no frame to analyse")
    width, height = output_size(video["width"], video["height"], options.get("max_side"))
    per_chunk = chunk_frames_for(
        width, height, settings.video_chunk_frames, settings.video_chunk_bytes
    )
    ranges = chunk_ranges_at_keyframes(plan.source_pts, per_chunk, plan.keyframes)
    plan_key = ctx.storage.key(payload["tenant"], job_id, "work", "plan.json")
    document = {
        "fps": str(plan.fps),
        "size": [width, height],
        "frames": total,
        "chunks": ranges,
        "source_pts": plan.source_pts,
        "source_times": plan.source_times,
        "declared_frames": plan.declared_frames,
        "found_frames": plan.found_frames,
        "warnings": plan.warnings,
    }
    ctx.storage.write_bytes(plan_key, json.dumps(document).encode())
    if not ctx.store.chunks.planned(job_id, total, len(ranges)):
        raise JobGone(job_id)
    for index, (start, count) in enumerate(ranges):
        chunk: Chunk = {
            "index": index,
            "start": start,
            "count": count,
            "source_pts": plan.source_pts[start : start + count],
        }
        ctx.storage.write_bytes(
            work_key(ctx, payload, index, "plan.json"), json.dumps(chunk).encode()
        )
    planned: PlannedVideo = {
        **payload,
        "plan_key": plan_key,
        "chunks_total": len(ranges),
        "frames_total": total,
        "fps": str(plan.fps),
        "size": [width, height],
        # Fixed for the job here, so every worker publishes the same next chunks.
        "window": max(1, settings.video_window_chunks),
        "thumbnails": _spread(total, THUMBNAILS),
    }
    for index in range(min(planned["window"], len(ranges))):
        publish_chunk(ctx, planned, index)
    return planned


def chunk_frames_for(width: int, height: int, max_frames: int, max_bytes: int) -> int:
    """Frames per chunk so one chunk of BGR frames stays under ``max_bytes`` (at least 1)."""
    return max(1, min(max_frames, max_bytes // (width * height * 3)))


def chunk_ranges_at_keyframes(
    source_pts: Sequence[int], per_chunk: int, keyframes: frozenset[int]
) -> list[tuple[int, int]]:
    """``(start, count)`` of each chunk, contiguous, each starting on a keyframe where one
    is near.

    A chunk decodes from the keyframe at or before its first frame, so a chunk that
    starts on one decodes nothing it throws away (with a 2 s keyframe interval and
    64-frame chunks, unaligned chunks decode about a quarter more). A chunk ends at the
    last keyframe in the second half of its ``per_chunk`` frames, else after
    ``per_chunk`` frames: never longer than ``per_chunk``.
    """
    if per_chunk < 1:
        raise ValueError(f"per_chunk must be at least 1, not {per_chunk}")
    total = len(source_pts)
    ranges = []
    start = 0
    while start < total:
        end = min(start + per_chunk, total)
        if end < total:
            for cut in range(end, start + max(1, per_chunk // 2) - 1, -1):
                if source_pts[cut] in keyframes and source_pts[cut] != source_pts[cut - 1]:
                    end = cut
                    break
        ranges.append((start, end - start))
        start = end
    return ranges


def _spread(total: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``total`` frames (fewer for short videos)."""
    return sorted({min(total - 1, int((k + 0.5) * total / count)) for k in range(count)})


def planned_part(payload: ChunkPayload | PlannedVideo) -> PlannedVideo:
    """The job-wide part of a chunk's payload."""
    return {k: v for k, v in payload.items() if k in PLANNED_KEYS}  # type: ignore[return-value]


def work_key(ctx: WorkerContext, job: JobPayload, index: int, suffix: str) -> str:
    """Storage key of a chunk's working file, e.g. ``work/chunk-00003.frames.npy``."""
    return ctx.storage.key(job["tenant"], job["job_id"], "work", f"chunk-{index:05d}.{suffix}")


def read_plan(ctx: WorkerContext, key: str) -> dict[str, Any]:
    """The whole plan (every frame's source pts and time): read once, by the finishing step."""
    plan: dict[str, Any] = json.loads(ctx.storage.path(key).read_text())
    return plan


def publish_chunk(ctx: WorkerContext, planned: PlannedVideo, index: int) -> None:
    """Publish chunk ``index``'s chain unless it was published already (or does not exist)."""
    job_id = planned["job_id"]
    if index >= planned["chunks_total"] or ctx.store.chunks.was_dispatched(job_id, index):
        return
    chunk: Chunk = json.loads(
        ctx.storage.path(work_key(ctx, planned, index, "plan.json")).read_text()
    )
    # mypy cannot tell that ** of a PlannedVideo fills a ChunkPayload's required keys.
    payload: ChunkPayload = {**planned, "chunk": chunk}  # type: ignore[typeddict-item]
    build_chunk_chain(ctx.celery, payload).apply_async()
    ctx.store.chunks.mark_dispatched(job_id, index)


def publish_finish(ctx: WorkerContext, planned: PlannedVideo) -> None:
    job_id = planned["job_id"]
    if ctx.store.chunks.was_dispatched(job_id, FINISH):
        return
    # Its work grows with the video (tracking, frames.json): a time limit to match.
    soft = ctx.settings.step_time_limit_seconds + FINISH_SECONDS_PER_FRAME * planned["frames_total"]
    ctx.celery.send_task(
        TASK_POSTPROCESS_VIDEO_FINISH,
        args=(planned,),
        queue=QUEUE_POSTPROCESS,
        routing_key=QUEUE_POSTPROCESS,
        task_id=f"{job_id}-finish",
        priority=rank(planned["priority"]),
        soft_time_limit=soft,
        time_limit=soft + HARD_LIMIT_GRACE_SECONDS,
    )
    ctx.store.chunks.mark_dispatched(job_id, FINISH)


def chunk_finished(ctx: WorkerContext, payload: ChunkPayload, stage: str, seconds: float) -> int:
    """Count the payload's chunk done in ``stage``; returns the stage's chunks done."""
    job_id, chunk = payload["job_id"], payload["chunk"]
    done = ctx.store.chunks.done(job_id, stage, chunk["index"], chunk["count"], seconds)
    if done < 0:
        raise JobGone(job_id)
    if done >= payload["chunks_total"]:
        ctx.store.jobs.stage_finished(job_id, stage)
    return done


def save_array(ctx: WorkerContext, key: str, array: np.ndarray) -> None:
    """Write ``array`` as .npy atomically, without a copy in memory."""
    with ctx.storage.atomic(key) as tmp, tmp.open("wb") as out:
        np.save(out, np.ascontiguousarray(array), allow_pickle=False)
