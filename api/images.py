"""Images for interactive segmentation (``/v1/images``), apart from HTTP.

An upload is stored once per tenant and content (its id is a digest of both) and its
embedding queued on the inference queue at once, so the first click finds it ready.
Each segment request is a job of its own (pipeline ``sam-prompt``: one step, the mask
decoder, on ``CV_SAM_DECODER_QUEUE``): when the embedding is ready the request waits
for it up to ``CV_SEGMENT_WAIT_SECONDS`` and answers the masks; otherwise, or past the
bound, it answers 202 with the job to follow, as any job (polling, events, webhooks).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from typing import IO, Any

from kombu.exceptions import OperationalError

from api.auth import Caller
from api.errors import (
    BadRequest,
    Conflict,
    NotFound,
    ServiceUnavailable,
    UnprocessableImage,
)
from api.pipelines import model_status
from api.services import Services
from api.submissions import check_image, publish
from common.chains import build_prompt, rank
from common.clock import seconds_since
from common.contract import PROMPT_PIPELINE, QUEUE_INFERENCE, TASK_SAM_EMBED
from common.jobstore.images import image_id_of
from common.jobstore.records import OverLimit
from common.prompts import PromptError, check_inside, check_masks, parse_request

log = logging.getLogger(__name__)


def image_url(image_id: str) -> str:
    return f"/v1/images/{image_id}"


def sam_model(svc: Services, name: str | None) -> str:
    """``name`` (default ``CV_SAM_MODEL``) if it is a SAM model some worker can run."""
    model = name or svc.settings.sam_model
    config = svc.catalogue.models.get(model)
    if config is None or config.task != "sam":
        known = ", ".join(svc.catalogue.models_for("sam")) or "none"
        raise BadRequest(f"{model!r} is not a SAM model; the SAM models are {known}")
    available, reason, reported = model_status(svc, model)
    if reported and not available:
        raise Conflict(f"model {model!r} is unavailable: {reason}")
    return model


def upload(
    svc: Services, caller: Caller, stream: IO[bytes], filename: str, model: str | None
) -> tuple[dict[str, Any], bool]:
    """Store the image (once per tenant and content) and queue its embedding under
    ``model``; returns its view and whether it is new."""
    header = check_image(svc, stream)
    model = sam_model(svc, model)
    tenant = caller.tenant
    digest = hashlib.sha256()
    stream.seek(0)
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
    sha256 = digest.hexdigest()
    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    image_id = image_id_of(tenant, sha256)
    images, ttl = svc.store.images, svc.settings.image_ttl_seconds
    record = images.get(tenant, image_id)
    created = record is None
    if created:
        svc.quotas.admit(tenant, 0, size)
        key = svc.storage.image_key(tenant, image_id, "image" + header.extension)
        width, height = header.upright  # as the workers decode it: prompts are in these
        fields = {
            "tenant": tenant,
            "sha256": sha256,
            "key": key,
            "width": width,
            "height": height,
            "bytes": size,
            "content_type": header.content_type,
            "format": header.format,
            "filename": os.path.basename(filename or "upload")[:200],
            "model": model,
        }
        try:
            svc.storage.write_stream(key, stream)
            created = images.create(tenant, image_id, fields, ttl)
        except BaseException:
            svc.storage.remove_image(tenant, image_id)
            raise
    else:
        images.touch(tenant, image_id, ttl)
    record = images.get(tenant, image_id) or {}
    if embedding_state(svc, record, model) in ("absent", "failed", "evicted", "stale"):
        queue_embedding(svc, record, model)
        record = images.get(tenant, image_id) or record
    return view(svc, record), created


def queue_embedding(svc: Services, record: dict[str, Any], model: str) -> None:
    """The image's embedding under ``model`` onto the inference queue."""
    payload = {
        "tenant": record["tenant"],
        "image_id": record["id"],
        "model_name": model,
        "input_key": record["key"],
        "sha256": record["sha256"],
    }
    try:
        svc.celery.signature(
            TASK_SAM_EMBED,
            args=(payload,),
            queue=QUEUE_INFERENCE,
            routing_key=QUEUE_INFERENCE,
            priority=rank("normal"),
        ).apply_async()
    except OperationalError as exc:
        raise ServiceUnavailable("the message broker does not answer") from exc
    mark_queued(svc, record, model)


def mark_queued(svc: Services, record: dict[str, Any], model: str) -> None:
    svc.store.images.set_embedding_state(record["tenant"], record["id"], model, {"state": "queued"})


def embedding_state(svc: Services, record: dict[str, Any], model: str) -> str:
    """queued, ready, failed, evicted (was ready; gone from the cache since), stale (queued
    longer than a step may run: its message was lost) or absent."""
    state = (record.get("embeddings") or {}).get(model) or {}
    name = state.get("state") or "absent"
    if name == "ready" and not svc.store.images.has_embedding(
        record["tenant"], str(state.get("name"))
    ):
        return "evicted"
    queued_at = state.get("updated_at")
    if name == "queued" and queued_at and seconds_since(queued_at, time.time()) > stale_after(svc):
        return "stale"
    return str(name)


def stale_after(svc: Services) -> float:
    """A queued embedding older than this was lost (a broker purged, a poison message)."""
    return 2.0 * svc.settings.step_time_limit_seconds + 60


def view(svc: Services, record: dict[str, Any]) -> dict[str, Any]:
    """What ``GET /v1/images/{id}`` shows."""
    embeddings = {}
    for model, state in (record.get("embeddings") or {}).items():
        if not state.get("state"):
            continue
        shown = {k: v for k, v in state.items() if k != "name"}
        now = embedding_state(svc, record, model)
        shown["state"] = "queued" if now == "stale" else now  # re-queued by the next upload
        embeddings[model] = shown
    image_id = record["id"]
    return {
        "id": image_id,
        "sha256": record["sha256"],
        "width": record["width"],
        "height": record["height"],
        "bytes": record["bytes"],
        "content_type": record["content_type"],
        "filename": record.get("filename", ""),
        "model": record["model"],
        "created_at": record["created_at"],
        "embeddings": embeddings,
        "links": {"self": image_url(image_id), "segment": f"{image_url(image_id)}/segment"},
    }


def get(svc: Services, caller: Caller, image_id: str) -> dict[str, Any]:
    record = svc.store.images.get(caller.tenant, image_id)
    if record is None:
        raise NotFound(f"no image {image_id} (never uploaded, deleted, or expired)")
    return record


def delete(svc: Services, caller: Caller, image_id: str) -> None:
    """The image, its answers' logits and its embeddings, gone."""
    tenant = caller.tenant
    record = svc.store.images.delete(tenant, image_id)
    if record is None:
        raise NotFound(f"no image {image_id} (never uploaded, deleted, or expired)")
    svc.storage.remove_image(tenant, image_id)
    for state in (record.get("embeddings") or {}).values():
        key = svc.store.images.drop_embedding(tenant, str(state.get("name"))) if state else None
        if key:
            svc.storage.path(key).unlink(missing_ok=True)


def segment(
    svc: Services, caller: Caller, image_id: str, body: dict[str, Any]
) -> dict[str, Any] | str:
    """Record and queue one request's prompts as a job; with the embedding ready, wait for
    its answer. Returns the result document as stored (JSON text: sent as it is, not
    parsed and written again), or the job's record to follow."""
    record = get(svc, caller, image_id)
    tenant = caller.tenant
    model = sam_model(svc, body.get("model") or record["model"])
    try:
        prompts = parse_request(body.get("prompts") or [])
        check_inside(prompts, *upright(record))
    except PromptError as exc:
        raise BadRequest(str(exc)) from exc
    for prompt in prompts:
        if prompt.mask_input:
            key = svc.storage.image_key(tenant, image_id, "masks", f"{prompt.mask_input}.npy")
            if not svc.storage.path(key).is_file():
                raise BadRequest(
                    f"mask_input {prompt.mask_input!r} is not a mask answered on this image"
                )
    try:
        check_masks(len(prompts) * (3 if body.get("multimask") else 1), *upright(record))
    except PromptError as exc:
        raise BadRequest(str(exc)) from exc
    limits = svc.quotas.admit(tenant, 1, 0)
    svc.store.images.touch(tenant, image_id, svc.settings.image_ttl_seconds)
    state = embedding_state(svc, record, model)
    ready = state == "ready"
    options = {
        "model": model,
        "multimask": bool(body.get("multimask", False)),
        "rle": bool(body.get("rle", False)),
        "min_score": float(body.get("min_score", 0.25)),
        "simplify": float(body.get("simplify", 1.0)),
        "prompts": [p.to_json() for p in prompts],
    }
    job = _enqueue(svc, caller, record, options, ready, limits.active_jobs)
    if state != "queued" and not ready:
        mark_queued(svc, record, model)  # the job computes it on its way
    bound = svc.settings.segment_wait_seconds
    wait = min(float(body.get("wait", bound)), bound)
    if not ready or not _wait(svc, job["id"], wait):
        return job
    done = svc.store.jobs.get(job["id"]) or job
    if done["state"] == "succeeded":
        result = svc.store.jobs.result_text(job["id"])
        if result is not None:
            return result
    if done["state"] == "failed":
        error = done.get("error") or {}
        detail = f"the prompts could not be answered: {error.get('detail', 'unknown error')}"
        if error.get("kind") == "input":
            raise UnprocessableImage(detail)
        raise ServiceUnavailable(detail)
    return done


_WAITING: dict[int, threading.BoundedSemaphore] = {}


def _wait(svc: Services, job_id: str, seconds: float) -> bool:
    """Wait for a prompt job's answer, unless this process has ``CV_SEGMENT_MAX_WAITING``
    requests waiting already (each holds a thread): then the job is the answer."""
    limit = svc.settings.segment_max_waiting
    waiting = _WAITING.setdefault(limit, threading.BoundedSemaphore(limit))
    if not waiting.acquire(blocking=False):
        return False
    try:
        return svc.store.images.wait_answered(job_id, seconds)
    finally:
        waiting.release()


def upright(record: dict[str, Any]) -> tuple[int, int]:
    return int(record["width"]), int(record["height"])


def _enqueue(
    svc: Services,
    caller: Caller,
    record: dict[str, Any],
    options: dict[str, Any],
    ready: bool,
    active_limit: int,
) -> dict[str, Any]:
    """Record the prompt job and publish it; all or nothing."""
    tenant, job_id = caller.tenant, uuid.uuid4().hex
    queue = svc.settings.sam_decoder_queue
    input_info = {
        "kind": "image",
        "key": record["key"],
        "image_id": record["id"],
        "sha256": record["sha256"],
        "width": record["width"],
        "height": record["height"],
        "content_type": record["content_type"],
        "format": record["format"],
        "filename": record.get("filename", ""),
        "bytes": 0,  # the image's bytes count once, for the image
    }
    try:
        job = svc.store.jobs.create(
            job_id,
            PROMPT_PIPELINE,
            [("inference", queue)],
            options,
            input_info,
            [f"{job_id}-inference"],
            tenant=tenant,
            key_id=caller.key_id,
            active_limit=active_limit,
        )
    except OverLimit:
        raise svc.quotas.over_active(tenant, active_limit, svc.store.jobs.active(tenant)) from None
    publish(svc, tenant, job_id, build_prompt(svc.celery, job, queue, embed_first=not ready))
    return job
