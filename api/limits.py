"""ASGI middleware that refuses request bodies over the upload limit with a 413.

It runs before Connexion parses the multipart body, so an oversized upload is
neither buffered nor written anywhere: a declared Content-Length over the limit
is refused before a byte is read. (A body without Content-Length never reaches
a handler: Connexion answers 400 for it.) The handler checks the file's own
size against the limit once it is parsed.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import PROBLEM_JSON, PayloadTooLarge

# Room for the multipart envelope and the small option fields around the file.
MULTIPART_OVERHEAD = 64 * 1024


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_upload_bytes: int, max_batch_bytes: int) -> None:
        self.app = app
        self.max_upload = max_upload_bytes
        self.max_batch = max_batch_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        batch = str(scope.get("path", "")).startswith("/v1/batches")
        limit = self.max_batch if batch else self.max_upload
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > limit + MULTIPART_OVERHEAD
        ):
            await self._refuse(send, int(declared), limit, batch)
            return
        await self.app(scope, receive, send)

    async def _refuse(self, send: Send, size: int, limit: int, batch: bool) -> None:
        setting = "CV_MAX_BATCH_BYTES" if batch else "CV_MAX_UPLOAD_BYTES"
        error = PayloadTooLarge(
            f"the request body is {size} bytes; "
            f"{'batches' if batch else 'uploads'} are limited to {limit} bytes ({setting})"
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
