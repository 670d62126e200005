"""The ``inference`` queue (the GPU worker; CPU where there is none).

Every model's output becomes ``Detections`` here, at the adapter
(``celery_worker.adapters``), in pixels of the original picture; the payload
carries them on as JSON.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from celery_worker import metrics
from celery_worker.adapters import from_mtcnn, from_yolo, yolo_masks
from celery_worker.context import WorkerContext
from celery_worker.errors import ChunkAlreadyDone, InputError, ModelUnavailable
from celery_worker.masks import pack
from celery_worker.models import LoadedModel, batch_capacity, detect_faces, yolo_arguments
from celery_worker.task import batch_step, chunk_step, job_step
from celery_worker.tasks.sam import detector, video_prompts
from celery_worker.video.chunks import chunk_finished, work_key
from celery_worker.video.frames import detect_frames
from common.contract import (
    TASK_INFER_DETECT,
    TASK_INFER_FACES,
    TASK_INFER_SEGMENT,
    TASK_INFER_VIDEO_CHUNK,
    ChunkPayload,
    ImagePayload,
)


def _model(ctx: WorkerContext, payload: ImagePayload | ChunkPayload, task: str) -> LoadedModel:
    loaded = ctx.models.get(payload["model_name"])
    if loaded.spec.task != task:
        raise ModelUnavailable(f"model {loaded.spec.name!r} is a {loaded.spec.task} model")
    return loaded


def _size(payload: ImagePayload) -> tuple[int, int]:
    return payload["image"]["width"], payload["image"]["height"]


def _predict_yolo(
    ctx: WorkerContext, payloads: list[ImagePayload], task: str
) -> list[tuple[LoadedModel, Any] | Exception]:
    """Ultralytics ``predict`` on each payload's model input: one forward pass per model,
    input shape and options (so each image gets exactly what it would get alone), at most
    its model's ``max_batch`` images each. A pass that fails is run again image by image,
    so a bad item fails alone."""
    outcomes: list[tuple[LoadedModel, Any] | Exception] = [RuntimeError("not run")] * len(payloads)
    groups: dict[tuple[str, tuple[int, ...], str], list[tuple[int, np.ndarray]]] = {}
    for index, payload in enumerate(payloads):
        try:
            loaded = _model(ctx, payload, task)
            image = ctx.model_input(payload, mapped=True)
        except Exception as exc:
            outcomes[index] = exc
            continue
        arguments = json.dumps(yolo_arguments(payload["options"], loaded.device), sort_keys=True)
        groups.setdefault((loaded.spec.name, image.shape, arguments), []).append((index, image))
    for (name, _, arguments), members in groups.items():
        loaded = ctx.models.get(name)
        size = batch_capacity(loaded.spec)
        for first in range(0, len(members), size):
            part = members[first : first + size]
            answers = _forward(loaded, [image for _, image in part], json.loads(arguments))
            for (index, _), outcome in zip(part, answers, strict=True):
                outcomes[index] = outcome
    return outcomes


def _forward(
    loaded: LoadedModel, images: list[np.ndarray], arguments: dict[str, Any]
) -> list[tuple[LoadedModel, Any] | Exception]:
    metrics.batch_run(loaded.spec.name, len(images))
    try:
        results = loaded.model.predict(images, **arguments)
    except Exception as exc:
        if len(images) == 1:
            return [exc]
        return [outcome for image in images for outcome in _forward(loaded, [image], arguments)]
    return [(loaded, result) for result in results]


def _each(
    outcomes: list[Any], payloads: list[ImagePayload], finish: Any
) -> list[ImagePayload | Exception]:
    """``finish(payload, loaded, result)`` for each image its model answered; an item that
    failed (or fails in ``finish``) stays its exception."""
    out: list[ImagePayload | Exception] = []
    for payload, outcome in zip(payloads, outcomes, strict=True):
        if isinstance(outcome, Exception):
            out.append(outcome)
            continue
        try:
            out.append(finish(payload, *outcome))
        except Exception as exc:
            out.append(exc)
    return out


@batch_step(TASK_INFER_DETECT, "inference")
def infer_detect(ctx: WorkerContext, payloads: list[ImagePayload]) -> list[Any]:
    """YOLO on the letterboxed images; boxes mapped back to original pixels."""

    def finish(payload: ImagePayload, loaded: LoadedModel, result: Any) -> ImagePayload:
        detections = from_yolo(result, loaded.names, payload["letterbox"], _size(payload))
        return {**payload, "detections": detections.to_json(), "model": loaded.report()}

    return _each(_predict_yolo(ctx, payloads, "detect"), payloads, finish)


@batch_step(TASK_INFER_SEGMENT, "inference")
def infer_segment(ctx: WorkerContext, payloads: list[ImagePayload]) -> list[Any]:
    """YOLO-seg: boxes as for detect, masks (model-input size) to a bit-packed file."""

    def finish(payload: ImagePayload, loaded: LoadedModel, result: Any) -> ImagePayload:
        box = payload["letterbox"]
        detections = from_yolo(result, loaded.names, box, _size(payload))
        key = ctx.storage.key(payload["tenant"], payload["job_id"], "work", "masks.npz")
        ctx.storage.write_bytes(key, pack(yolo_masks(result, box["height"], box["width"])))
        return {
            **payload,
            "detections": detections.to_json(),
            "masks_key": key,
            "model": loaded.report(),
        }

    return _each(_predict_yolo(ctx, payloads, "segment"), payloads, finish)


@job_step(TASK_INFER_FACES, "inference")
def infer_faces(ctx: WorkerContext, payload: ImagePayload) -> ImagePayload:
    """MTCNN on the RGB image: the faces over ``min_confidence``, with their landmarks."""
    loaded = _model(ctx, payload, "faces")
    boxes, probs, landmarks = detect_faces(loaded.model, ctx.model_input(payload))
    detections = from_mtcnn(
        boxes,
        probs,
        landmarks,
        payload["letterbox"]["scale"],
        _size(payload),
        float(payload["options"]["min_confidence"]),
    )
    return {**payload, "detections": detections.to_json(), "model": loaded.report()}


@chunk_step(TASK_INFER_VIDEO_CHUNK, "inference")
def infer_chunk(ctx: WorkerContext, payload: ChunkPayload) -> ChunkPayload:
    """The model on every decoded frame of the chunk, in batches; results to a JSON file."""
    started = time.perf_counter()
    job_id, chunk = payload["job_id"], payload["chunk"]
    index = chunk["index"]
    ledger = ctx.store.chunks
    if ledger.is_done(job_id, "postprocess", index):
        raise ChunkAlreadyDone()
    detections_key = work_key(ctx, payload, index, "json")
    out: ChunkPayload = {**payload, "detections_key": detections_key}
    if ledger.is_done(job_id, "inference", index) and ctx.storage.path(detections_key).is_file():
        chunk_finished(ctx, payload, "inference", 0.0)  # counted once; marks the stage
        return out  # redelivered after it finished: pass the chain on
    loaded = ctx.models.get(payload["model_name"])
    try:
        frames = np.load(ctx.storage.path(payload["frames_key"]), mmap_mode="r")
    except FileNotFoundError as exc:
        if ledger.is_done(job_id, "postprocess", index):
            raise ChunkAlreadyDone() from exc  # another copy of this chunk finished it
        raise InputError(f"the decoded frames of chunk {index} are missing from storage") from exc
    missing = set(payload.get("missing") or [])
    positions = [p for p in range(chunk["count"]) if p not in missing]
    prompts, finder = None, None
    if loaded.spec.task == "sam":  # pipelines sam (the job's prompts) and detect-sam
        if payload["options"].get("detector"):
            finder = detector(ctx, str(payload["options"]["detector"]))
        else:
            prompts = video_prompts(payload)
    found = detect_frames(
        loaded, [frames[p] for p in positions], payload["options"], prompts, finder
    )
    per_position = dict(zip(positions, found, strict=True))
    document = {
        "model": loaded.report(),
        "missing": sorted(missing),
        "damaged": sorted(payload.get("damaged") or []),
        "frames": [
            per_position[p].to_json() if p in per_position else [] for p in range(chunk["count"])
        ],
    }
    ctx.storage.write_bytes(detections_key, json.dumps(document).encode())
    chunk_finished(ctx, payload, "inference", time.perf_counter() - started)
    return out
