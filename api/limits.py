"""ASGI middleware that bounds request bodies: their size, their pace, and how many at once.

It runs before Connexion parses the multipart body, so an oversized upload is neither
buffered nor written anywhere:

- a declared Content-Length over the limit is refused (413) before a byte is read, and
  the bytes actually received are counted too (a chunked body, or one longer than it
  said), refused the moment they pass the limit;
- a body that pauses longer than ``CV_BODY_IDLE_SECONDS`` between two pieces, or that
  arrives slower than ``CV_BODY_MIN_RATE`` bytes a second on average once it has run that
  long, is answered 408 and dropped (a client trickling a byte a second would hold its
  connection and spool for ever);
- at most ``CV_MAX_CONCURRENT_UPLOADS`` requests with a body are read at once in one API
  process; one more is answered 503 with ``Retry-After`` at once, so a crowd of slow
  uploads cannot make the others wait for disk and memory. Requests without a body
  (every GET) are never counted.

A job's upload may be an image or a video, which only its content tells, so /v1/jobs
takes bodies up to the larger of the two limits; the handler checks the file against its
own kind's limit once it is parsed. Batches have theirs.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, Busy, PayloadTooLarge, RequestTimeout, send_problem

# Room for the multipart envelope and the small option fields around the file.
MULTIPART_OVERHEAD = 64 * 1024


class BodySizeLimit:
    def __init__(
        self,
        app: ASGIApp,
        max_upload_bytes: int,
        max_batch_bytes: int,
        max_video_bytes: int,
        body_idle_seconds: float = 15.0,
        max_concurrent: int = 256,
        body_min_rate: int = 0,
    ) -> None:
        self.app = app
        self.max_upload = max_upload_bytes
        self.max_batch = max_batch_bytes
        self.max_video = max_video_bytes
        self.idle_seconds = body_idle_seconds
        self.max_concurrent = max_concurrent
        self.min_rate = body_min_rate
        self.in_flight = 0  # one event loop per process: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if not chunked and (declared is None or declared.strip() in (b"", b"0")):
            await self.app(scope, receive, send)
            return
        what, limit, setting = self.limit(str(scope.get("path", "")))
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > limit + MULTIPART_OVERHEAD
        ):
            await send_problem(send, _too_large(int(declared), what, limit, setting), close=True)
            return
        if self.in_flight >= self.max_concurrent:
            await send_problem(
                send,
                Busy(
                    f"{self.max_concurrent} uploads are being received by this server "
                    "(CV_MAX_CONCURRENT_UPLOADS); try again in a moment"
                ),
                close=True,  # the body is left unread
            )
            return
        self.in_flight += 1
        try:
            await _GuardedBody(self, send, receive, what, limit, setting).run(scope)
        finally:
            self.in_flight -= 1

    def limit(self, path: str) -> tuple[str, int, str]:
        """What is posted to ``path``, its limit in bytes, and the setting that sets it."""
        if path.startswith("/v1/batches"):
            return "batches", self.max_batch, "CV_MAX_BATCH_BYTES"
        if path.rstrip("/") == "/v1/jobs" and self.max_video > self.max_upload:
            return "uploads", self.max_video, "CV_MAX_VIDEO_BYTES"
        return "uploads", self.max_upload, "CV_MAX_UPLOAD_BYTES"


class _GuardedBody:
    """One request: its body counted and timed; once this answers, the app's answer is
    dropped and the app sees the client gone."""

    def __init__(
        self,
        limits: BodySizeLimit,
        send: Send,
        receive: Receive,
        what: str,
        limit: int,
        setting: str,
    ) -> None:
        self.limits = limits
        self._send = send
        self._receive = receive
        self.what, self.limit, self.setting = what, limit, setting
        self.received = 0
        self.started = asyncio.get_running_loop().time()
        self.body_done = False
        self.response_started = False
        self.answered = False

    async def run(self, scope: Scope) -> None:
        await self.limits.app(scope, self.receive, self.send)

    async def receive(self) -> Message:
        if self.answered:
            return {"type": "http.disconnect"}
        if self.body_done:
            return await self._receive()  # e.g. a streaming response awaiting a disconnect
        try:
            message = await asyncio.wait_for(self._receive(), self.limits.idle_seconds)
        except TimeoutError:
            await self._refuse(
                RequestTimeout(
                    f"the request body paused for more than {self.limits.idle_seconds:g} s "
                    "(CV_BODY_IDLE_SECONDS)"
                )
            )
            return {"type": "http.disconnect"}
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.body_done = not message.get("more_body", False)
            if self.received > self.limit + MULTIPART_OVERHEAD:
                await self._refuse(
                    _too_large(self.received, self.what, self.limit, self.setting, received=True)
                )
                return {"type": "http.disconnect"}
            if not self.body_done and self._too_slow():
                await self._refuse(
                    RequestTimeout(
                        f"the request body arrives slower than {self.limits.min_rate} bytes a "
                        "second (CV_BODY_MIN_RATE)"
                    )
                )
                return {"type": "http.disconnect"}
        return message

    def _too_slow(self) -> bool:
        if not self.limits.min_rate:
            return False
        elapsed = asyncio.get_running_loop().time() - self.started
        return elapsed > self.limits.idle_seconds and (
            self.received / elapsed < self.limits.min_rate
        )

    async def send(self, message: Message) -> None:
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)

    async def _refuse(self, error: ApiError) -> None:
        if not self.response_started:
            await send_problem(self._send, error, close=True)
        self.answered = True


def _too_large(
    size: int, what: str, limit: int, setting: str, received: bool = False
) -> PayloadTooLarge:
    amount = (
        f"more than {limit + MULTIPART_OVERHEAD} bytes arrived"
        if received
        else (f"the request body is {size} bytes")
    )
    return PayloadTooLarge(f"{amount}; {what} are limited to {limit} bytes ({setting})")
