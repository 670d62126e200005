"""Errors the API shows to clients, all as ``application/problem+json``.

    ApiError (500)
    ├── BadRequest (400)            unknown pipeline, option not of this pipeline, bad value
    ├── Forbidden (403)             the caller's role may not ask this (priority high)
    ├── NotFound (404)              no such job or artifact (expired jobs, and other
    │                               tenants' jobs, are not found)
    ├── Conflict (409)              result asked of an unfinished job; pipeline's model missing
    ├── RequestTimeout (408)        a body paused longer than CV_BODY_IDLE_SECONDS
    ├── PayloadTooLarge (413)       upload over CV_MAX_UPLOAD_BYTES (declared or received)
    ├── UnsupportedMediaType (415)  the upload is not an image the workers can decode
    ├── UnprocessableImage (422)    an image, but not one we process (pixel limit, empty)
    ├── TooManyRequests (429)       over a tenant limit; ``Retry-After``; nothing was kept
    ├── InsufficientStorage (507)   the storage volume would keep less than
    │                               CV_STORAGE_MIN_FREE_BYTES free; nothing was kept
    └── ServiceUnavailable (503)    RabbitMQ or Redis does not answer; nothing was kept
        └── Busy (503)              CV_MAX_CONCURRENT_UPLOADS bodies in flight; Retry-After

Validation errors found by Connexion against the spec are its own 400 problems; its
security layer answers 401 (no key, unknown or revoked: ``api.app`` adds
``WWW-Authenticate``) and 403 (the role may not call the operation).
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

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(ApiError):
    status = 400
    title = "Bad Request"


class Forbidden(ApiError):
    status = 403
    title = "Forbidden"


class NotFound(ApiError):
    status = 404
    title = "Not Found"


class Conflict(ApiError):
    status = 409
    title = "Conflict"


class RequestTimeout(ApiError):
    status = 408
    title = "Request Timeout"


class PayloadTooLarge(ApiError):
    status = 413
    title = "Payload Too Large"


class UnsupportedMediaType(ApiError):
    status = 415
    title = "Unsupported Media Type"


class UnprocessableImage(ApiError):
    status = 422
    title = "Unprocessable Content"


class TooManyRequests(ApiError):
    status = 429
    title = "Too Many Requests"

    def __init__(
        self, detail: str, limit: str, limit_value: int, usage: int, retry_after: int
    ) -> None:
        super().__init__(detail)
        self.limit, self.limit_value, self.usage = limit, limit_value, usage
        self.retry_after = retry_after

    def problem(self) -> dict[str, Any]:
        return {
            **super().problem(),
            "limit": self.limit,
            "limit_value": self.limit_value,
            "usage": self.usage,
        }

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class InsufficientStorage(ApiError):
    status = 507
    title = "Insufficient Storage"


class ServiceUnavailable(ApiError):
    status = 503
    title = "Service Unavailable"


class Busy(ServiceUnavailable):
    """As many uploads as one API process takes at once are in flight; try again soon."""

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


async def send_problem(send: Any, error: ApiError, close: bool = False) -> None:
    """Answer ``error`` as problem+json straight from an ASGI middleware (``send`` is the
    ASGI send callable), before Connexion or Flask see the request."""
    body = error.body()
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in error.headers().items()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
