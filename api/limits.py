"""ASGI middleware that refuses request bodies over the upload limit with a 413.

It runs before Connexion parses the multipart body, so an oversized upload is
neither buffered nor written anywhere: a declared Content-Length over the limit
is refused before a byte is read. (A body without Content-Length never reaches
a handler: Connexion answers 400 for it.)

A job's upload may be an image or a video, which only its content tells, so
/v1/jobs takes bodies up to the larger of the two limits; the handler checks
the file against its own kind's limit once it is parsed. Batches have theirs.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import PROBLEM_JSON, PayloadTooLarge

# Room for the multipart envelope and the small option fields around the file.
MULTIPART_OVERHEAD = 64 * 1024


class BodySizeLimit:
    def __init__(
        self, app: ASGIApp, max_upload_bytes: int, max_batch_bytes: int, max_video_bytes: int
    ) -> None:
        self.app = app
        self.max_upload = max_upload_bytes
        self.max_batch = max_batch_bytes
        self.max_video = max_video_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        what, limit, setting = self.limit(str(scope.get("path", "")))
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > limit + MULTIPART_OVERHEAD
        ):
            await self._refuse(send, int(declared), what, limit, setting)
            return
        await self.app(scope, receive, send)

    def limit(self, path: str) -> tuple[str, int, str]:
        """What is posted to ``path``, its limit in bytes, and the setting that sets it."""
        if path.startswith("/v1/batches"):
            return "batches", self.max_batch, "CV_MAX_BATCH_BYTES"
        if path.rstrip("/") == "/v1/jobs" and self.max_video > self.max_upload:
            return "uploads", self.max_video, "CV_MAX_VIDEO_BYTES"
        return "uploads", self.max_upload, "CV_MAX_UPLOAD_BYTES"

    async def _refuse(self, send: Send, size: int, what: str, limit: int, setting: str) -> None:
        error = PayloadTooLarge(
            f"the request body is {size} bytes; {what} are limited to {limit} bytes ({setting})"
        )
        body = error.body()
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
