"""Writing a job's artifacts (the files clients download) and naming them in its result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from celery_worker.context import WorkerContext
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
