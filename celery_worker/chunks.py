"""How a video job's chunks are published, joined and stored.

A video job runs as: ``preprocess.video`` (plan the frames, split them into chunks)
-> one chain per chunk (``preprocess.video_chunk`` -> ``inference.video_chunk`` ->
``postprocess.video_chunk``) -> ``postprocess.video_finish`` (assemble).

- At most ``CV_VIDEO_WINDOW_CHUNKS`` chunks of a job are in flight: the planning step
  publishes the first ones, and each chunk that leaves postprocess publishes the one
  a window further on. Decoded frames on disk stay bounded, and several inference
  workers can still share one video.
- Every chunk step counts its chunk done in Redis, once per chunk index however often
  it ran (``JobStore.chunk_done``); whoever completes a stage's last chunk marks the
  stage finished, and the last chunk out of postprocess publishes the finishing step.
- A publish is recorded after it happened, so a worker killed in between publishes
  twice, never zero times; the chunk steps are idempotent (whole files under fixed
  names; a copy that finds its chunk finished stops), so twice is harmless.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from celery import chain

from celery_worker.app import app
from celery_worker.context import WorkerContext
from celery_worker.errors import JobGone
from common.celery_app import HARD_LIMIT_GRACE_SECONDS
from common.contract import (
    QUEUE_INFERENCE,
    QUEUE_POSTPROCESS,
    QUEUE_PREPROCESS,
    TASK_INFER_VIDEO_CHUNK,
    TASK_POSTPROCESS_VIDEO_CHUNK,
    TASK_POSTPROCESS_VIDEO_FINISH,
    TASK_PREPROCESS_VIDEO_CHUNK,
    Chunk,
    Payload,
)

FINISH = -1  # the finishing step's entry among a job's published chunks
# Time the finishing step may take per frame on top of the step limit: tracking took
# 0.54 ms a frame with 8 objects; 10x that leaves room for crowded scenes and frames.json.
FINISH_SECONDS_PER_FRAME = 0.005

# What every chunk's payload carries from the planning step.
BASE_KEYS = (
    "job_id",
    "pipeline",
    "model_name",
    "options",
    "input_key",
    "kind",
    "video",
    "render",
    "plan_key",
    "chunks_total",
    "frames_total",
    "fps",
    "size",
    "window",
    "thumbnails",
)


def base_of(payload: Payload) -> Payload:
    """The job-wide part of a chunk's payload."""
    return {k: v for k, v in payload.items() if k in BASE_KEYS}  # type: ignore[return-value]


def work_key(ctx: WorkerContext, job_id: str, index: int, suffix: str) -> str:
    """Storage key of a chunk's working file, e.g. ``work/chunk-00003.frames.npy``."""
    return ctx.storage.key(job_id, "work", f"chunk-{index:05d}.{suffix}")


def write_plan(ctx: WorkerContext, key: str, plan: dict[str, Any]) -> None:
    ctx.storage.write_bytes(key, json.dumps(plan).encode())


def read_plan(ctx: WorkerContext, key: str) -> dict[str, Any]:
    """The whole plan (every frame's source pts and time): read once, by the finishing step."""
    plan: dict[str, Any] = json.loads(ctx.storage.path(key).read_text())
    return plan


def write_chunk_plan(
    ctx: WorkerContext, job_id: str, index: int, start: int, source_pts: list[int]
) -> None:
    """One chunk's part of the plan, so publishing a chunk never reads the whole plan."""
    document = {"index": index, "start": start, "count": len(source_pts), "source_pts": source_pts}
    ctx.storage.write_bytes(
        work_key(ctx, job_id, index, "plan.json"), json.dumps(document).encode()
    )


def publish_chunk(ctx: WorkerContext, base: Payload, index: int) -> None:
    """Publish chunk ``index``'s chain unless it was published already (or does not exist)."""
    job_id = base["job_id"]
    if index >= base["chunks_total"] or ctx.store.was_dispatched(job_id, index):
        return
    chunk: Chunk = json.loads(
        ctx.storage.path(work_key(ctx, job_id, index, "plan.json")).read_text()
    )
    payload: Payload = {**base, "chunk": chunk}
    steps = (
        (TASK_PREPROCESS_VIDEO_CHUNK, QUEUE_PREPROCESS, "preprocess"),
        (TASK_INFER_VIDEO_CHUNK, QUEUE_INFERENCE, "inference"),
        (TASK_POSTPROCESS_VIDEO_CHUNK, QUEUE_POSTPROCESS, "postprocess"),
    )
    chain(
        *(
            app.signature(
                task,
                args=(payload,) if position == 0 else (),
                queue=queue,
                routing_key=queue,
                task_id=f"{job_id}-c{index}-{stage}",
            )
            for position, (task, queue, stage) in enumerate(steps)
        )
    ).apply_async()
    ctx.store.mark_dispatched(job_id, index)


def publish_finish(ctx: WorkerContext, base: Payload) -> None:
    job_id = base["job_id"]
    if ctx.store.was_dispatched(job_id, FINISH):
        return
    # Its work grows with the video (tracking, frames.json): a time limit to match.
    soft = ctx.settings.step_time_limit_seconds + FINISH_SECONDS_PER_FRAME * base["frames_total"]
    app.send_task(
        TASK_POSTPROCESS_VIDEO_FINISH,
        args=(base,),
        queue=QUEUE_POSTPROCESS,
        routing_key=QUEUE_POSTPROCESS,
        task_id=f"{job_id}-finish",
        soft_time_limit=soft,
        time_limit=soft + HARD_LIMIT_GRACE_SECONDS,
    )
    ctx.store.mark_dispatched(job_id, FINISH)


def chunk_finished(ctx: WorkerContext, payload: Payload, stage: str, seconds: float) -> int:
    """Count the payload's chunk done in ``stage``; returns the stage's chunks done."""
    job_id, chunk = payload["job_id"], payload["chunk"]
    done = ctx.store.chunk_done(job_id, stage, chunk["index"], chunk["count"], seconds)
    if done < 0:
        raise JobGone(job_id)
    if done >= payload["chunks_total"]:
        ctx.store.stage_finished(job_id, stage)
    return done


def save_array(ctx: WorkerContext, key: str, array: np.ndarray) -> None:
    """Write ``array`` as .npy atomically, without a copy in memory."""
    with ctx.storage.atomic(key) as tmp, tmp.open("wb") as out:
        np.save(out, np.ascontiguousarray(array), allow_pickle=False)
