"""Writing a job's artifacts (the files clients download) and naming them in its result.

Both are bounded: ``most_confident`` picks the detections that get a crop file (at
most ``CV_MAX_CROPS``), ``refuse_large_result`` fails a job whose result document
would pass ``CV_MAX_RESULT_BYTES`` before it reaches Redis.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from celery_worker.context import WorkerContext
from celery_worker.errors import InputError
from celery_worker.imaging import encode, safe_name
from common.contract import JobPayload, artifact_content_type, artifact_href


def store(ctx: WorkerContext, job: JobPayload, name: str, data: bytes) -> dict[str, Any]:
    """Write ``data`` as the artifact ``name`` of the payload's job; returns its entry."""
    ctx.storage.write_bytes(ctx.storage.key(job["tenant"], job["job_id"], "artifacts", name), data)
    return {"name": name, "content_type": artifact_content_type(name), "bytes": len(data)}


def store_image(
    ctx: WorkerContext, job: JobPayload, stem: str, image: np.ndarray, fmt: str
) -> dict[str, Any]:
    """``image`` (BGR) as ``<stem>.jpg`` or ``<stem>.png``; returns its entry."""
    return store(ctx, job, f"{stem}.{'png' if fmt == 'png' else 'jpg'}", encode(image, fmt))


def describe(path: Path) -> dict[str, Any]:
    """The entry of an artifact written in place (a video, frames.json)."""
    return {
        "name": path.name,
        "content_type": artifact_content_type(path.name),
        "bytes": path.stat().st_size,
    }


def linked(job_id: str, artifacts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries as a result lists them: each with its download ``href``."""
    return [{**a, "href": artifact_href(job_id, a["name"])} for a in artifacts]


def crop_box(box: np.ndarray) -> tuple[int, int, int, int] | None:
    """Whole pixels around an xyxy box (floor, ceil); None when nothing is left."""
    x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
    x2, y2 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    return x1, y1, x2, y2


def crop_stem(prefix: str, number: int, class_name: str) -> str:
    """``crop-0001-person``, ``crop-track-0003-car``."""
    return f"{prefix}-{number:04d}-{safe_name(class_name)}"


def most_confident(
    items: Sequence[dict[str, Any]], candidates: Sequence[int], limit: int
) -> set[int]:
    """The ``limit`` indices of ``candidates`` whose detections in ``items`` are the most
    confident (the earlier detection first between equals)."""
    ranked = sorted(candidates, key=lambda index: -float(items[index]["confidence"]))
    return set(ranked[: max(limit, 0)])


def refuse_large_result(result: dict[str, Any], limit: int) -> None:
    """Fail the job (kind ``input``) when ``result`` is over ``limit`` bytes of JSON.

    Results are kept whole in Redis and sent whole by ``GET /v1/jobs/{id}/result``;
    measured as the job store writes them (``json.dumps``, ASCII: one byte a character).
    The message names what the job's options can do about it.
    """
    size = len(json.dumps(result))
    if size <= limit:
        return
    options = result.get("options") or {}
    remedies = []
    if options.get("rle"):
        remedies.append("rle=false (masks as polygons only)")
    if "confidence" in options:
        remedies.append(f"a higher confidence (this job: {options['confidence']})")
    if "max_detections" in options:
        remedies.append(f"a lower max_detections (this job: {options['max_detections']})")
    if "classes" in options:
        remedies.append("only the classes you need (classes)")
    advice = "; ask for less: " + ", or ".join(remedies) if remedies else ""
    raise InputError(
        f"the result would be {size} bytes of JSON, over the limit of {limit} bytes "
        f"(CV_MAX_RESULT_BYTES){advice}"
    )
