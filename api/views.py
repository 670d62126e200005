"""Turns job records into the JSON the spec promises (links included)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from common.contract import artifact_content_type, artifact_href


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
