"""Submissions: what ``POST /v1/jobs`` (and each member of a batch) does, apart from HTTP.

Validate the request and the upload, store it, record the job and publish its first
step. All or nothing: when Redis or RabbitMQ fails part way, the stored upload and
the job record are removed again before the 503 goes out.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import redis
from celery.canvas import Signature
from kombu.exceptions import OperationalError

from api import metrics
from api.auth import Caller
from api.errors import (
    BadRequest,
    Busy,
    Conflict,
    Forbidden,
    PayloadTooLarge,
    ServiceUnavailable,
    UnprocessableImage,
    UnsupportedMediaType,
)
from api.options import NON_OPTIONS, get_pipeline, resolve_options
from api.pipelines import model_status
from api.services import Services
from common.callbacks import CallbackRefused, check_callback_url
from common.catalogue import PipelineConfig
from common.chains import build_start, step_task_ids
from common.contract import Priority
from common.images import (
    ImageHeader,
    ImageUnprocessable,
    NotAnImage,
    UnsupportedImageFormat,
    inspect_image,
)
from common.jobstore.records import OverLimit
from common.probe import ProbesBusy, probe_untrusted
from common.videos import NotAVideo, VideoInfo, VideoUnprocessable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """What a submission asks for, validated: shared by single jobs and batches."""

    pipeline: PipelineConfig
    options: dict[str, Any]
    callback_url: str | None
    tenant: str
    key_id: str | None
    priority: Priority
    # The options the client set (the rest are defaults).
    given: frozenset[str] = frozenset()


def parse_request(
    svc: Services, caller: Caller, fields: dict[str, Any], priority: Priority = "normal"
) -> Request:
    """The pipeline, its options, the callback and the priority of a submission by
    ``caller`` (``priority`` unless it asks for another), or a 400/403/409."""
    priority = fields.get("priority") or priority
    if priority == "high" and not caller.is_admin:
        raise Forbidden("only admins submit with priority high")
    pipeline = get_pipeline(svc.catalogue, str(fields.get("pipeline", "")))
    options = resolve_options(svc.catalogue, pipeline, fields)
    callback = str(fields["callback_url"]) if fields.get("callback_url") else None
    if callback:
        try:
            check_callback_url(
                callback,
                svc.settings.callback_hosts,
                svc.settings.callback_allow_loopback,
                svc.settings.callback_ports,
            )
        except CallbackRefused as exc:
            raise BadRequest(str(exc)) from exc
    given = frozenset(k for k, v in fields.items() if k not in NON_OPTIONS and v is not None)
    return Request(pipeline, options, callback, caller.tenant, caller.key_id, priority, given)


def submit(
    svc: Services, caller: Caller, stream: IO[bytes], filename: str, fields: dict[str, Any]
) -> dict[str, Any]:
    """Validate, admit (the tenant's limits), store, record and queue a job (an image or
    a video); returns its record."""
    request = parse_request(svc, caller, fields)
    upload = check_upload(svc, stream)
    if not isinstance(upload, VideoInfo):
        refuse_video_options(request)
    refuse_if_unavailable(svc, request)
    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    limits = svc.quotas.admit(request.tenant, 1, size)
    if isinstance(upload, VideoInfo):
        return submit_video(svc, request, upload, stream, filename, limits.active_jobs)
    return submit_image(svc, request, upload, stream, filename, limits.active_jobs)


def check_image(svc: Services, stream: IO[bytes]) -> ImageHeader:
    """Size and header of one upload, or a 413/415/422 error."""
    size = stream.seek(0, os.SEEK_END)
    if size > svc.settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"the file is {size} bytes; the limit is {svc.settings.max_upload_bytes}"
        )
    return _inspect(stream, svc.settings.max_image_pixels)


def check_upload(svc: Services, stream: IO[bytes]) -> ImageHeader | VideoInfo:
    """An image's header or a video's probe, within its kind's limits; else 413/415/422.

    Images are recognised from their header; anything else is opened with FFmpeg
    (PyAV), which must decode a first frame: a file that is neither gets a 415.
    """
    settings = svc.settings
    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    largest = max(settings.max_upload_bytes, settings.max_video_bytes)
    if size > largest:
        raise PayloadTooLarge(f"the file is {size} bytes; the limit is {largest}")
    try:
        header = inspect_image(stream, settings.max_image_pixels)
    except ImageUnprocessable as exc:
        raise UnprocessableImage(str(exc)) from exc
    except UnsupportedImageFormat as exc:
        raise UnsupportedMediaType(str(exc)) from exc
    except NotAnImage:
        pass
    else:
        if size > settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"the image is {size} bytes; images are limited to {settings.max_upload_bytes} "
                "bytes (CV_MAX_UPLOAD_BYTES)"
            )
        return header
    try:
        info = probe_untrusted(stream, settings, svc.storage.tmp_dir)
    except ProbesBusy as exc:
        raise Busy(str(exc)) from exc
    except NotAVideo as exc:
        raise UnsupportedMediaType(
            "the file is neither an image nor a video the service can read "
            f"({exc}); send JPEG, PNG, WebP, BMP or TIFF images, or MP4, MOV, MKV, WebM or "
            "AVI videos"
        ) from exc
    except VideoUnprocessable as exc:
        raise UnprocessableImage(str(exc)) from exc
    finally:
        stream.seek(0)
    if size > settings.max_video_bytes:
        raise PayloadTooLarge(
            f"the video is {size} bytes; videos are limited to {settings.max_video_bytes} "
            "bytes (CV_MAX_VIDEO_BYTES)"
        )
    return info


def refuse_video_options(request: Request) -> None:
    """400 for options that only apply to videos, sent with an image."""
    video_only = sorted(
        o.name for o in request.pipeline.options if o.media == "video" and o.name in request.given
    )
    if video_only:
        raise BadRequest(f"option {', '.join(map(repr, video_only))} applies to videos only")


def submit_image(
    svc: Services,
    request: Request,
    header: ImageHeader,
    stream: IO[bytes],
    filename: str,
    active_limit: int,
    batch: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """Store, record and queue one checked image of a validated request; all or nothing.

    ``batch``: the id and window of the batch it belongs to; a member recorded ``held``
    is published later, when a member before it ends (``common.batching``).
    """
    input_info = _input_info("image", filename, header.content_type, header.format)
    input_info.update(width=header.width, height=header.height)
    return _enqueue(svc, request, stream, header.extension, input_info, active_limit, batch)


def submit_video(
    svc: Services,
    request: Request,
    info: VideoInfo,
    stream: IO[bytes],
    filename: str,
    active_limit: int,
) -> dict[str, Any]:
    """Store, record and queue one probed video; the workers split it into chunks."""
    input_info = _input_info("video", filename, info.content_type, info.container)
    input_info.update(width=info.width, height=info.height, video=info.as_dict())
    return _enqueue(svc, request, stream, info.extension, input_info, active_limit)


def _input_info(kind: str, filename: str, content_type: str, fmt: str) -> dict[str, Any]:
    """What the job record says about its upload (sizes are added by the caller)."""
    return {
        "kind": kind,
        "filename": Path(filename or "upload").name[:200],
        "content_type": content_type,
        "format": fmt,
    }


def _enqueue(
    svc: Services,
    request: Request,
    stream: IO[bytes],
    extension: str,
    input_info: dict[str, Any],
    active_limit: int,
    batch: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """Store the upload, record the job and publish its first step; all or nothing.

    The record is refused (429, the upload removed again) when the tenant reached its
    limit of active jobs meanwhile. It notes the job unpublished until RabbitMQ
    confirmed the publish: if this process dies in between, upkeep publishes it
    (``celery_worker.upkeep``).
    """
    pipeline = request.pipeline
    tenant = request.tenant
    job_id = uuid.uuid4().hex
    input_key = svc.storage.key(tenant, job_id, "input" + extension)
    try:
        size = svc.storage.write_stream(input_key, stream)
        stages = [(step.stage, step.queue) for step in pipeline.steps]
        record = svc.store.jobs.create(
            job_id,
            pipeline.name,
            stages,
            request.options,
            {"key": input_key, **input_info, "bytes": size},
            step_task_ids(job_id, pipeline),
            request.callback_url,
            tenant=tenant,
            key_id=request.key_id,
            priority=request.priority,
            active_limit=active_limit,
            batch_id=batch[0] if batch else None,
            window=batch[1] if batch else 0,
        )
    except OverLimit:
        svc.storage.remove_job(tenant, job_id)
        raise svc.quotas.over_active(tenant, active_limit, svc.store.jobs.active(tenant)) from None
    except BaseException:
        svc.storage.remove_job(tenant, job_id)
        raise
    metrics.job_submitted(pipeline, tenant, job_id, input_info["kind"], bool(record["held"]))
    if record["held"]:
        return record  # published when a member before it ends
    publish(svc, tenant, job_id, build_start(svc.celery, pipeline, record))
    return record


def publish(svc: Services, tenant: str, job_id: str, start: Signature) -> None:
    """Publish a recorded job's first message and note it published; on a failed publish
    the record (and any files) go again (a 503 when the broker does not answer)."""
    try:
        start.apply_async()
    except BaseException as exc:
        _rollback(svc, tenant, job_id)
        if isinstance(exc, OperationalError):
            log.warning("publishing job %s failed: %s", job_id, exc)
            raise ServiceUnavailable("the message broker does not answer") from exc
        raise
    try:
        svc.store.jobs.published(job_id)
    except redis.RedisError as exc:  # the job is queued: say so; upkeep sees it has run
        log.warning("job %s published, but noting it failed: %s", job_id, exc)


def _inspect(stream: IO[bytes], max_pixels: int) -> ImageHeader:
    try:
        return inspect_image(stream, max_pixels)
    except NotAnImage as exc:
        raise UnsupportedMediaType(str(exc)) from exc
    except ImageUnprocessable as exc:
        raise UnprocessableImage(str(exc)) from exc


def refuse_if_unavailable(svc: Services, request: Request) -> None:
    """409 when inference workers are online and all of them lack the job's model (or
    detect-sam's detector)."""
    pipeline = request.pipeline.name
    for model in (request.options["model"], request.options.get("detector")):
        if model is None:
            continue
        available, reason, reported = model_status(svc, str(model))
        if reported and not available:
            raise Conflict(f"pipeline {pipeline!r} with model {model!r} is unavailable: {reason}")


def _rollback(svc: Services, tenant: str, job_id: str) -> None:
    try:
        svc.store.jobs.delete(job_id, tenant)
    except redis.RedisError:
        log.exception("could not remove the record of job %s after a failed publish", job_id)
    svc.storage.remove_job(tenant, job_id)
