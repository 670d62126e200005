"""Errors the API shows to clients, all as ``application/problem+json``.

    ApiError (500)
    ├── BadRequest (400)            unknown pipeline, option not of this pipeline, bad value
    ├── NotFound (404)              no such job or artifact (expired jobs are not found)
    ├── Conflict (409)              result asked of an unfinished job; pipeline's model missing
    ├── PayloadTooLarge (413)       upload over CV_MAX_UPLOAD_BYTES
    ├── UnsupportedMediaType (415)  the upload is not an image the workers can decode
    ├── UnprocessableImage (422)    an image, but not one we process (pixel limit, empty)
    └── ServiceUnavailable (503)    RabbitMQ or Redis does not answer; nothing was kept

Validation errors found by Connexion against the spec are its own 400 problems.
Redis and broker connection errors raised anywhere in a handler become 503
through the handlers registered in ``api.app``.
"""

from __future__ import annotations

import json
from typing import Any

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    status = 500
    title = "Internal Server Error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def problem(self) -> dict[str, Any]:
        return {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }

    def body(self) -> bytes:
        return json.dumps(self.problem()).encode()


class BadRequest(ApiError):
    status = 400
    title = "Bad Request"


class NotFound(ApiError):
    status = 404
    title = "Not Found"


class Conflict(ApiError):
    status = 409
    title = "Conflict"


class PayloadTooLarge(ApiError):
    status = 413
    title = "Payload Too Large"


class UnsupportedMediaType(ApiError):
    status = 415
    title = "Unsupported Media Type"


class UnprocessableImage(ApiError):
    status = 422
    title = "Unprocessable Content"


class ServiceUnavailable(ApiError):
    status = 503
    title = "Service Unavailable"
