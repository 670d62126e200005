"""Turns job records into the JSON the spec promises (links included)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from common.contract import STAGES, artifact_content_type, artifact_href


def job_url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def artifact_links(job_id: str, artifacts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "name": a["name"],
            "href": artifact_href(job_id, a["name"]),
            "content_type": a.get("content_type") or artifact_content_type(a["name"]),
            "bytes": a.get("bytes", 0),
        }
        for a in artifacts
    ]


def job_view(record: dict[str, Any]) -> dict[str, Any]:
    job_id = record["id"]
    succeeded = record["state"] == "succeeded"
    return {
        "id": job_id,
        "tenant": record["tenant"],
        "priority": record["priority"],
        "pipeline": record["pipeline"],
        "state": record["state"],
        "step": record.get("step"),
        "options": record.get("options") or {},
        "input": _input_view(record.get("input") or {}),
        "callback_url": record.get("callback_url"),
        "notification": record.get("notification"),
        "submitted_at": record["submitted_at"],
        "finished_at": record.get("finished_at"),
        "steps": [_step_view(s) for s in record.get("steps") or []],
        "error": record.get("error"),
        "progress": progress(record),
        "links": {
            "self": job_url(job_id),
            "result": f"{job_url(job_id)}/result" if succeeded else None,
            "artifacts": artifact_links(job_id, record.get("artifacts") or []),
        },
    }


def _input_view(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k != "key"}


def _step_view(step: dict[str, Any]) -> dict[str, Any]:
    seconds = None
    if step.get("started_at") and step.get("finished_at"):
        started = datetime.fromisoformat(step["started_at"])
        seconds = round((datetime.fromisoformat(step["finished_at"]) - started).total_seconds(), 4)
    return {**step, "seconds": seconds}


def progress(record: dict[str, Any], now: datetime | None = None) -> dict[str, Any] | None:
    """A video job's progress: frames done of the total, percent, rate and ETA.

    A frame is done once its chunk went through all three stages (it is in the output
    video); ``frames_by_stage`` shows each stage's own count. The ETA extrapolates the
    rate since the job started. None for images, and for videos not planned yet.
    """
    total = int(record.get("frames_total") or 0)
    if total <= 0:
        return None
    by_stage = {stage: int(record.get(f"frames_done:{stage}") or 0) for stage in STAGES}
    done = min(by_stage["postprocess"], total)
    steps = record.get("steps") or []
    started = steps[0].get("started_at") if steps else None
    end = record.get("finished_at")
    elapsed = None
    if started:
        until = datetime.fromisoformat(end) if end else (now or datetime.now(UTC))
        elapsed = max((until - datetime.fromisoformat(started)).total_seconds(), 1e-3)
    rate = done / elapsed if elapsed and done else None
    eta = None
    if record["state"] in ("queued", "running") and rate:
        eta = round((total - done) / rate, 1)
    elif record["state"] == "succeeded":
        eta = 0.0
    return {
        "frames_done": done,
        "frames_total": total,
        "percent": round(100 * done / total, 1),
        "eta_seconds": eta,
        "frames_per_second": round(rate, 2) if rate else None,
        "chunks_total": int(record.get("chunks_total") or 0),
        "frames_by_stage": by_stage,
    }
