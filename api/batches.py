"""Batches: many images, one pipeline. Each image becomes a job; bad ones fail alone.

A batch is a JSON document in Redis (``cv:batch:<id>``) listing its members and
their job ids; its progress is read from the jobs themselves. The download zip
is built on request from the jobs' results and artifacts.

A zip archive is refused whole, before any member is stored, when it is not a plain
zip of a batch's size (``api.archives``); a member that is merely not an image fails
alone.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import IO, Any

import redis
from kombu.exceptions import OperationalError

from api.archives import extract, image_entries, open_zip
from api.auth import Caller
from api.errors import (
    ApiError,
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)
from api.services import Services
from api.storage_space import room_for
from api.submissions import (
    Request,
    check_image,
    parse_request,
    refuse_if_unavailable,
    submit_image,
)
from api.views import artifact_links, job_url
from common.clock import now_iso
from common.contract import DEFAULT_TENANT, STAGES, TERMINAL_STATES

log = logging.getLogger(__name__)


def batch_url(batch_id: str) -> str:
    return f"/v1/batches/{batch_id}"


def submit(
    svc: Services,
    caller: Caller,
    files: list[tuple[str, IO[bytes]]],
    archive: IO[bytes] | None,
    fields: dict[str, Any],
) -> dict[str, Any]:
    """Queue one job per image; members that cannot be processed are recorded as rejected.

    Members get priority ``low`` unless the request asks for another, so a big batch
    never holds up single jobs. A batch that would pass the tenant's limit of active
    jobs is refused whole, before any member is stored.
    """
    request = parse_request(svc, caller, fields, priority="low")
    if not files and archive is None:
        raise BadRequest("send the images as repeated 'files' fields or as one zip 'archive'")
    refuse_if_unavailable(svc, request)
    limit = svc.settings.max_batch_files
    if len(files) > limit:
        raise PayloadTooLarge(f"{len(files)} files; a batch takes at most {limit}")
    bundle = open_zip(archive, svc.settings) if archive is not None else None
    try:
        entries = image_entries(bundle) if bundle is not None else []
        if len(files) + len(entries) > limit:
            raise PayloadTooLarge(f"{len(entries)} files in the zip; a batch takes at most {limit}")
        size = sum(upload.seek(0, os.SEEK_END) for _, upload in files)
        size += sum(info.file_size for info in entries)
        for _, upload in files:
            upload.seek(0)
        batch_id = uuid.uuid4().hex
        # The body holds its own size on the storage volume (api.uploads); the zip's members
        # are new bytes on top of it, held while they are inflated and stored (507).
        inflated = sum(info.file_size for info in entries)
        with room_for(svc.storage, inflated, svc.settings.storage_min_free_bytes):
            limits = svc.quotas.admit(request.tenant, len(files) + len(entries), size)
            members = _store_members(
                svc,
                request,
                _members(svc, files, bundle, entries),
                limits.active_jobs,
                (batch_id, svc.settings.batch_window),
            )
    finally:
        if bundle is not None:
            bundle.close()
    batch = {
        "id": batch_id,
        "tenant": request.tenant,
        "key_id": request.key_id,
        "priority": request.priority,
        "pipeline": request.pipeline.name,
        "options": request.options,
        "submitted_at": now_iso(),
        "members": members,
    }
    svc.store.batches.create(batch)
    return batch


def _store_members(
    svc: Services,
    request: Request,
    streams: Iterator[tuple[str, IO[bytes] | ApiError]],
    active_limit: int,
    batch: tuple[str, int],
) -> list[dict[str, Any]]:
    """Submit each member as a job; one that cannot be processed is recorded with its error.

    All or nothing when RabbitMQ or Redis fails part way (``_undo``).
    """
    members: list[dict[str, Any]] = []
    for index, (filename, stream) in enumerate(streams):
        member: dict[str, Any] = {
            "index": index,
            "filename": filename,
            "job_id": None,
            "error": None,
        }
        try:
            if isinstance(stream, ApiError):
                raise stream
            header = check_image(svc, stream)
            job = submit_image(svc, request, header, stream, filename, active_limit, batch)
            member["job_id"] = job["id"]
        except ApiError as exc:
            if isinstance(exc, ServiceUnavailable):
                _undo(svc, request.tenant, members)
                raise
            member["error"] = exc.detail
        except BaseException:
            _undo(svc, request.tenant, members)
            raise
        members.append(member)
    return members


def _undo(svc: Services, tenant: str, members: list[dict[str, Any]]) -> None:
    """A batch that cannot be completed (RabbitMQ or Redis failed part way) leaves nothing:
    its members so far are cancelled and removed, as a single job's upload is."""
    for member in members:
        job_id = member["job_id"]
        if job_id is None:
            continue
        try:
            if svc.store.jobs.cancel(job_id):
                svc.celery.control.revoke([f"{job_id}-{s}" for s in STAGES])
            svc.store.jobs.delete(job_id, tenant)
        except (redis.RedisError, OperationalError):
            log.warning("could not remove batch member %s after a failed batch", job_id)
        svc.storage.remove_job(tenant, job_id)


def _members(
    svc: Services,
    files: list[tuple[str, IO[bytes]]],
    bundle: zipfile.ZipFile | None,
    entries: list[zipfile.ZipInfo],
) -> Iterator[tuple[str, IO[bytes] | ApiError]]:
    yield from files
    if bundle is not None:
        yield from extract(bundle, entries, svc.settings.max_upload_bytes)


def view(svc: Services, batch: dict[str, Any]) -> dict[str, Any]:
    members = batch["members"]
    job_ids = [m["job_id"] for m in members if m["job_id"]]
    states = dict(zip(job_ids, svc.store.jobs.states(job_ids), strict=True))
    items = []
    for member in members:
        job_id = member["job_id"]
        state = (states.get(job_id) or "expired") if job_id else "rejected"
        items.append(
            {
                "index": member["index"],
                "filename": member["filename"],
                "job_id": job_id,
                "state": state,
                "error": member["error"],
                "links": {
                    "job": job_url(job_id) if job_id else None,
                    "result": f"{job_url(job_id)}/result" if state == "succeeded" else None,
                },
            }
        )
    counts = Counter(item["state"] for item in items)
    finished = sum(counts[s] for s in (*TERMINAL_STATES, "rejected", "expired"))
    complete = finished == len(items)
    return {
        "id": batch["id"],
        "tenant": batch.get("tenant") or DEFAULT_TENANT,
        "priority": batch.get("priority") or "low",
        "pipeline": batch["pipeline"],
        "options": batch["options"],
        "state": "completed" if complete else "running",
        "submitted_at": batch["submitted_at"],
        "counts": {
            "total": len(items),
            "done": counts["succeeded"],
            "failed": finished - counts["succeeded"],
            "pending": len(items) - finished,
        },
        "states": dict(counts),
        "items": items,
        "links": {
            "self": batch_url(batch["id"]),
            "download": f"{batch_url(batch['id'])}/download" if complete else None,
        },
    }


def get(svc: Services, caller: Caller, batch_id: str) -> dict[str, Any]:
    """The batch, if the caller may see it (another tenant's answers 404, as a missing one)."""
    batch = svc.store.batches.get(batch_id)
    tenant = (batch or {}).get("tenant") or DEFAULT_TENANT
    if batch is None or not (caller.is_admin or tenant == caller.tenant):
        raise NotFound(f"no batch {batch_id} (never submitted, or expired)")
    return {**batch, "tenant": tenant, "priority": batch.get("priority") or "low"}


def archive(svc: Services, caller: Caller, batch_id: str) -> IO[bytes]:
    """The zip of a completed batch: batch.json, then a folder per member."""
    batch = get(svc, caller, batch_id)
    summary = view(svc, batch)
    if summary["state"] != "completed":
        counts = summary["counts"]
        raise Conflict(
            f"batch {batch_id} is still running ({counts['done']} done, {counts['failed']} "
            f"failed of {counts['total']}); download it once it is completed"
        )
    # Closed by the response that sends it.
    out = tempfile.SpooledTemporaryFile(max_size=16 << 20)  # noqa: SIM115
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("batch.json", json.dumps(summary, indent=1))
        for item in summary["items"]:
            folder = f"{item['index']:04d}-{PurePosixPath(item['filename']).stem[:60] or 'image'}"
            job_id = item["job_id"]
            record = svc.store.jobs.get(job_id) if job_id else None
            if item["state"] != "succeeded" or record is None:
                error = (record or {}).get("error") or item["error"] or item["state"]
                bundle.writestr(f"{folder}/error.json", json.dumps({"error": error}, indent=1))
                continue
            result = svc.store.jobs.result(job_id)
            bundle.writestr(f"{folder}/result.json", json.dumps(result, indent=1))
            for link in artifact_links(job_id, record.get("artifacts") or []):
                path = svc.storage.artifact_path(batch["tenant"], job_id, link["name"])
                if path.is_file():
                    bundle.write(path, f"{folder}/{link['name']}")
    out.seek(0)
    return out
