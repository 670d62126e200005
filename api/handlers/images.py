"""Handlers of /v1/images: images for interactive segmentation (SAM family)."""

from __future__ import annotations

from typing import Any

from flask import Response as FlaskResponse
from werkzeug.datastructures import FileStorage

from api import images
from api.auth import caller
from api.errors import BadRequest
from api.services import services
from api.views import job_url, job_view

Response = tuple[Any, int] | tuple[Any, int, dict[str, str]] | FlaskResponse
JSON = {"Content-Type": "application/json"}


def upload_image(body: dict[str, Any], file: FileStorage | None = None) -> Response:
    if file is None:
        raise BadRequest("the multipart field 'file' (the image) is missing")
    svc = services()
    shown, created = images.upload(
        svc, caller(), file.stream, file.filename or "", body.get("model")
    )
    location = images.image_url(shown["id"])
    return shown, 201 if created else 200, {**JSON, "Location": location}


def get_image(image_id: str) -> Response:
    svc = services()
    return images.view(svc, images.get(svc, caller(), image_id)), 200, JSON


def delete_image(image_id: str) -> Response:
    images.delete(services(), caller(), image_id)
    return "", 204


def segment_image(image_id: str, body: dict[str, Any]) -> Response:
    answer = images.segment(services(), caller(), image_id, body)
    if isinstance(answer, str):  # the stored result, as it is: large answers cost less
        return FlaskResponse(answer, 200, mimetype="application/json")
    return job_view(answer), 202, {**JSON, "Location": job_url(answer["id"])}
