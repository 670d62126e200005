"""Promptable segmentation (SAM family): the pipelines' inference steps and the prompts of
``POST /v1/images/{id}/segment``.

- ``inference.sam`` (pipeline ``sam``): the job's ``boxes`` / ``points`` options answered
  on the uploaded picture; one mask per object, ``class_id`` the object's row.
- ``inference.detect-sam`` (pipeline ``detect-sam``): a detector's boxes prompt the
  segmenter, one mask per detection (Ultralytics' auto-annotation), with the
  detection's class and confidence.
- ``sam_embed``: an image's embedding into the cache (``POST /v1/images``; or ahead of a
  prompt job whose decoder runs on the CPU workers).
- ``sam_prompt``: one segment request's prompts, answered from the cached embedding
  (encoded first when it is not there) and written as the prompt job's result.

Every embedding goes through the cache (``celery_worker.embeddings``): the same picture
under the same weights is encoded once per tenant, whichever way it came in.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis
from celery.exceptions import Ignore

from celery_worker import artifacts
from celery_worker.adapters import from_yolo
from celery_worker.context import WorkerContext
from celery_worker.detections import Detections
from celery_worker.embeddings import Found
from celery_worker.errors import InputError, JobGone, ModelUnavailable, StepFailed
from celery_worker.imaging import decode_image
from celery_worker.masks import pack, rle
from celery_worker.models import LoadedModel, sha256_of, yolo_arguments
from celery_worker.sam import MIN_SCORE, Mask, bounds, identity, mask_detections, mask_outlines
from celery_worker.task import MAX_REDELIVERIES, REDIS_RETRY, StepTask, job_step, worker_task
from common.contract import (
    TASK_INFER_DETECT_SAM,
    TASK_INFER_SAM,
    TASK_SAM_EMBED,
    TASK_SAM_PROMPT,
    ChunkPayload,
    ImagePayload,
)
from common.prompts import Prompt, PromptError, check_inside, check_masks, from_options

# Answered masks whose logits an image keeps for refining (a request may add 192).
MASKS_PER_IMAGE = 256


def segmenter(ctx: WorkerContext, name: str) -> LoadedModel:
    loaded = ctx.models.get(name)
    if loaded.spec.task != "sam":
        raise ModelUnavailable(f"model {name!r} is a {loaded.spec.task} model, not a SAM model")
    return loaded


def detector(ctx: WorkerContext, name: str) -> LoadedModel:
    loaded = ctx.models.get(name)
    if loaded.spec.task != "detect":
        raise ModelUnavailable(f"detector {name!r} is a {loaded.spec.task} model")
    return loaded


def job_prompts(options: dict[str, Any], width: int, height: int) -> list[Prompt]:
    """A ``sam`` job's prompts, checked against the picture; an input error if bad."""
    try:
        prompts = from_options(options.get("boxes"), options.get("points"), options.get("labels"))
        check_inside(prompts, width, height)
        check_masks(len(prompts), width, height)
    except PromptError as exc:
        raise InputError(str(exc)) from exc
    return prompts


def too_many(count: int, width: int, height: int) -> None:
    """An input error for more detections than one answer's masks may hold."""
    try:
        check_masks(count, width, height)
    except PromptError as exc:
        raise InputError(f"{exc} (detect-sam: lower max_detections)") from exc


def video_prompts(payload: ChunkPayload) -> list[Prompt]:
    """A ``sam`` video job's prompts (pixels of the upright source) on its output frames."""
    video = payload["video"]
    width, height = int(video["width"]), int(video["height"])
    if int(video.get("rotation") or 0) % 180:
        width, height = height, width
    prompts = job_prompts(payload["options"], width, height)
    out_width, out_height = payload["size"]
    return [p.scaled(out_width / width, out_height / height) for p in prompts]


def detected(finder: LoadedModel, picture: np.ndarray, options: dict[str, Any]) -> Detections:
    """The detector's boxes on a picture, in its pixels (detect-sam's prompts)."""
    result = finder.model.predict(picture, **yolo_arguments(options, finder.device))[0]
    return from_yolo(result, finder.names)


def box_prompts(found: Detections) -> list[Prompt]:
    return [Prompt(box=tuple(row)) for row in found.xyxy.tolist()]  # type: ignore[arg-type]


def segment_frame(
    loaded: LoadedModel,
    frame: np.ndarray,
    options: dict[str, Any],
    prompts: Sequence[Prompt] | None,
    finder: LoadedModel | None,
) -> Detections:
    """One video frame: its own embedding (frames are not cached), then the job's prompts
    or, with ``finder``, the detector's boxes (one mask each, however it scores)."""
    height, width = frame.shape[:2]
    found = detected(finder, frame, options) if finder is not None else None
    if found is not None:
        if not len(found):
            return found
        too_many(len(found), width, height)
        prompts = box_prompts(found)
    min_score = -np.inf if found is not None else MIN_SCORE
    masks = loaded.model.answer(loaded.model.encode(frame), prompts or [], min_score=min_score)
    return mask_detections(masks, width, height, found)


def _masks_out(
    ctx: WorkerContext,
    payload: ImagePayload,
    masks: Sequence[Mask],
    detections: Detections,
    loaded: LoadedModel,
    report: dict[str, Any],
) -> ImagePayload:
    """What postprocess.segment takes: full-size masks (bit-packed), the detections."""
    width, height = payload["image"]["width"], payload["image"]["height"]
    stack = np.stack([m.mask for m in masks]) if masks else np.zeros((0, height, width), bool)
    key = ctx.storage.key(payload["tenant"], payload["job_id"], "work", "masks.npz")
    ctx.storage.write_bytes(key, pack(stack))
    return {
        **payload,
        "detections": detections.to_json(),
        "masks_key": key,
        "letterbox": identity(width, height),
        "model": {**loaded.report(), "embedding": report},
    }


def _embedding(ctx: WorkerContext, payload: ImagePayload, loaded: LoadedModel, image: Any) -> Any:
    sha = sha256_of([ctx.storage.path(payload["input_key"])])
    return ctx.embeddings.get_or_encode(payload["tenant"], sha, loaded, lambda: image)


@job_step(TASK_INFER_SAM, "inference")
def infer_sam(ctx: WorkerContext, payload: ImagePayload) -> ImagePayload:
    """The job's boxes and points answered on the picture (as ``SAM.predict`` would)."""
    loaded = segmenter(ctx, payload["model_name"])
    image = ctx.model_input(payload)
    height, width = image.shape[:2]
    prompts = job_prompts(payload["options"], width, height)
    found = _embedding(ctx, payload, loaded, image)
    masks = loaded.model.answer(found.embedding, prompts)
    detections = mask_detections(masks, width, height, outlines=False)
    return _masks_out(ctx, payload, masks, detections, loaded, found.report())


@job_step(TASK_INFER_DETECT_SAM, "inference")
def infer_detect_sam(ctx: WorkerContext, payload: ImagePayload) -> ImagePayload:
    """The detector's boxes, each segmented by the SAM model: one mask per detection."""
    loaded = segmenter(ctx, payload["model_name"])
    finder = detector(ctx, str(payload["options"]["detector"]))
    masks, detections, report = detect_then_segment(
        ctx, payload, loaded, finder, ctx.model_input(payload)
    )
    return _masks_out(ctx, payload, masks, detections, loaded, report)


def detect_then_segment(
    ctx: WorkerContext,
    payload: ImagePayload,
    loaded: LoadedModel,
    finder: LoadedModel,
    image: np.ndarray,
) -> tuple[list[Mask], Detections, dict[str, Any]]:
    height, width = image.shape[:2]
    found = detected(finder, image, payload["options"])
    report: dict[str, Any] = {"detector": finder.report()}
    if not len(found):
        return [], found, report  # nothing to segment: no embedding either
    too_many(len(found), width, height)
    embedded = _embedding(ctx, payload, loaded, image)
    masks = loaded.model.answer(embedded.embedding, box_prompts(found), min_score=-np.inf)
    detections = mask_detections(masks, width, height, found, outlines=False)
    return masks, detections, {**report, **embedded.report()}


# POST /v1/images: embeddings ahead of prompts ------------------------------------------
def embedding_state(ctx: WorkerContext, payload: dict[str, Any], state: dict[str, Any]) -> None:
    ctx.store.images.set_embedding_state(
        payload["tenant"], payload["image_id"], payload["model_name"], state
    )


def image_picture(ctx: WorkerContext, payload: dict[str, Any]) -> np.ndarray:
    try:
        return decode_image(ctx.storage.path(payload["input_key"]), ctx.settings.max_image_pixels)
    except FileNotFoundError as exc:
        raise InputError("the image is no longer in storage (deleted or expired)") from exc


@worker_task(TASK_SAM_EMBED, **REDIS_RETRY)
def sam_embed(task: StepTask, payload: dict[str, Any]) -> dict[str, Any]:
    """An image's embedding into the cache; the image's record says how it went. Ahead of
    a prompt job (``job_id``), a failure fails that job and stops its chain."""
    ctx = task.ctx
    tenant, image_id, model = payload["tenant"], payload["image_id"], payload["model_name"]
    job_id = payload.get("job_id")
    if job_id and ctx.store.jobs.state(job_id) not in ("queued", "running"):
        ctx.store.images.clear_embedding_state(tenant, image_id, model)
        raise Ignore()  # cancelled or deleted meanwhile: its prompt job never follows
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    if (
        redelivered
        and ctx.store.images.count_redelivery(tenant, image_id, model) > MAX_REDELIVERIES
    ):
        detail = (
            f"the worker encoding this image died {MAX_REDELIVERIES + 1} times; not tried again"
        )
        _embedding_failed(ctx, payload, "worker-lost", detail)
        raise Ignore()
    try:
        loaded = segmenter(ctx, model)
        found = ctx.embeddings.get_or_encode(
            tenant, payload["sha256"], loaded, lambda: image_picture(ctx, payload)
        )
    except (redis.ConnectionError, redis.TimeoutError):
        raise  # retried with back-off (REDIS_RETRY)
    except StepFailed as exc:
        _embedding_failed(ctx, payload, exc.kind, str(exc))
        raise Ignore() from None
    except Exception as exc:
        _embedding_failed(ctx, payload, "internal", f"{type(exc).__name__}: {exc}")
        raise
    embedding_state(ctx, payload, ready_state(found, loaded))
    return payload


def ready_state(found: Found, loaded: LoadedModel) -> dict[str, Any]:
    """An image's embedding state once it is in the cache (``name``: its cache entry)."""
    return {
        "state": "ready",
        **found.report(),
        "name": found.name,
        "weights_sha256": loaded.info["weights_sha256"],
    }


def _embedding_failed(ctx: WorkerContext, payload: dict[str, Any], kind: str, detail: str) -> None:
    error = {"step": "inference", "kind": kind, "detail": detail}
    embedding_state(ctx, payload, {"state": "failed", "error": error})
    job_id = payload.get("job_id")
    if job_id and ctx.store.jobs.fail(job_id, "inference", kind, detail):
        ctx.ended(job_id)


@job_step(TASK_SAM_PROMPT, "inference", final=True)
def sam_prompt(ctx: WorkerContext, payload: dict[str, Any]) -> dict[str, Any]:
    """One segment request: its prompts answered in as few decoder passes as their shapes
    allow; per mask the outline, area, score and an id a later prompt may refine."""
    started = time.perf_counter()
    tenant, image_id, options = payload["tenant"], payload["image_id"], payload["options"]
    loaded = segmenter(ctx, payload["model_name"])
    try:
        found = ctx.embeddings.get_or_encode(
            tenant, payload["sha256"], loaded, lambda: image_picture(ctx, payload)
        )
    except StepFailed as exc:  # the job fails with it (job_step); the image says so too
        error = {"step": "inference", "kind": exc.kind, "detail": str(exc)}
        embedding_state(ctx, payload, {"state": "failed", "error": error})
        raise
    # Ready, whoever encoded it (the request that queued this job marked it queued).
    embedding_state(ctx, payload, ready_state(found, loaded))
    prompts = [Prompt.from_json(p) for p in payload["prompts"]]
    height, width = found.embedding.height, found.embedding.width
    try:
        check_inside(prompts, width, height)
        check_masks(len(prompts) * (3 if options["multimask"] else 1), width, height)
    except PromptError as exc:
        raise InputError(str(exc)) from exc
    answers = loaded.model.answer(
        found.embedding,
        prompts,
        _mask_inputs(ctx, tenant, image_id, prompts),
        bool(options["multimask"]),
        float(options["min_score"]),
    )
    items = []
    folder = ctx.storage.path(ctx.storage.image_key(tenant, image_id, "masks", "x")).parent
    for answer in answers:
        mask_id = uuid.uuid4().hex
        buffer = io.BytesIO()
        np.save(buffer, answer.logits.astype(np.float16))
        key = ctx.storage.image_key(tenant, image_id, "masks", f"{mask_id}.npy")
        ctx.storage.write_bytes(key, buffer.getvalue())
        item: dict[str, Any] = {
            "id": mask_id,
            "prompt": answer.index,
            "score": round(answer.score, 6),
            "box": [round(v, 3) for v in bounds(answer.mask)],
            "area": int(answer.mask.sum()),
            "polygons": mask_outlines(answer.mask, float(options["simplify"])),
        }
        if options["rle"]:
            item["rle"] = rle(answer.mask)
        items.append(item)
    keep_newest(folder, MASKS_PER_IMAGE)
    timings = {
        **payload.get("timings", {}),
        "embedding": round(found.seconds, 4),
        "decode": round(time.perf_counter() - started - found.seconds, 4),
    }
    result = {
        "job_id": payload["job_id"],
        "pipeline": payload["pipeline"],
        "image": {"width": width, "height": height},
        "image_id": image_id,
        "model": {**loaded.report(), "embedding": found.report()},
        "options": options,
        "masks": items,
        "timings": timings,
    }
    artifacts.refuse_large_result(result, ctx.settings.max_result_bytes)
    if not ctx.store.jobs.succeed(payload["job_id"], "inference", result, []):
        raise JobGone(payload["job_id"])
    return {"job_id": payload["job_id"], "pipeline": payload["pipeline"], "timings": timings}


def keep_newest(folder: Path, count: int) -> None:
    """Only the newest ``count`` answered masks of an image are kept (refinable)."""
    try:
        files = sorted(folder.glob("*.npy"), key=lambda f: f.stat().st_mtime, reverse=True)
    except FileNotFoundError:  # the image was deleted meanwhile
        return
    for old in files[count:]:
        old.unlink(missing_ok=True)


def _mask_inputs(
    ctx: WorkerContext, tenant: str, image_id: str, prompts: Sequence[Prompt]
) -> dict[str, np.ndarray]:
    """The logits of earlier answers the prompts refine, by mask id."""
    out = {}
    for prompt in prompts:
        if prompt.mask_input and prompt.mask_input not in out:
            key = ctx.storage.image_key(tenant, image_id, "masks", f"{prompt.mask_input}.npy")
            try:
                out[prompt.mask_input] = np.load(ctx.storage.path(key), allow_pickle=False)
            except FileNotFoundError:
                raise InputError(
                    f"mask {prompt.mask_input!r} is not an answer on this image (or one of "
                    f"the {MASKS_PER_IMAGE} newest, which alone are kept)"
                ) from None
    return out
