"""Handlers of /v1/jobs."""

from __future__ import annotations

from typing import Any

from flask import send_file
from werkzeug.datastructures import FileStorage

from api import jobs, submissions
from api.auth import caller
from api.errors import BadRequest
from api.services import services
from api.views import job_url, job_view

Response = tuple[Any, int] | tuple[Any, int, dict[str, str]]
JSON = {"Content-Type": "application/json"}


def create_job(body: dict[str, Any], file: FileStorage | None = None) -> Response:
    if file is None:
        raise BadRequest("the multipart field 'file' (the image) is missing")
    record = submissions.submit(services(), caller(), file.stream, file.filename or "", body)
    return job_view(record), 202, {**JSON, "Location": job_url(record["id"])}


def get_job(job_id: str) -> Response:
    return job_view(jobs.get(services(), caller(), job_id)), 200, JSON


def list_jobs(
    state: str | None = None, limit: int = 50, offset: int = 0, tenant: str | None = None
) -> Response:
    return jobs.page(services(), caller(), state, limit, offset, tenant), 200, JSON


def delete_job(job_id: str) -> Response:
    jobs.delete(services(), caller(), job_id)
    return "", 204


def get_result(job_id: str) -> Response:
    return jobs.result(services(), caller(), job_id), 200, JSON


def get_artifact(job_id: str, name: str) -> Any:
    path, content_type = jobs.artifact_path(services(), caller(), job_id, name)
    return send_file(path, mimetype=content_type, download_name=name, max_age=3600)
