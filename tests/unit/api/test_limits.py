"""Body limits (api/limits.py) at the ASGI level, and the request-head deadline
(api/server.py) on a real uvicorn server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from api.limits import MULTIPART_OVERHEAD, BodySizeLimit
from api.server import HeadTimeoutProtocol

Message = dict[str, Any]


class Recorder:
    """An app that reads its whole body (noting what it saw) and answers 200."""

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.seen: list[str] = []
        self.hold = hold

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            self.seen.append(message["type"])
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        if self.hold is not None:
            await self.hold.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def request(headers: dict[str, str], path: str = "/v1/jobs") -> Message:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }


def feeder(chunks: list[bytes], pause: float = 0.0) -> Any:
    pending = list(chunks)

    async def receive() -> Message:
        if not pending:
            await asyncio.sleep(3600)  # the client went quiet
        await asyncio.sleep(pause)
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    return receive


def stalls_after(first: bytes) -> Any:
    """A client that sends ``first``, says more follows, and goes quiet."""
    calls = 0

    async def receive() -> Message:
        nonlocal calls
        calls += 1
        if calls > 1:
            await asyncio.sleep(3600)
        return {"type": "http.request", "body": first, "more_body": True}

    return receive


async def call(limit: BodySizeLimit, scope: Message, receive: Any) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await limit(scope, receive, send)
    return sent


def status_of(sent: list[Message]) -> tuple[int, dict[str, Any]]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body) if start["status"] != 200 else {}


def limits(app: Any, **kwargs: Any) -> BodySizeLimit:
    options = {"max_upload_bytes": 1000, "max_batch_bytes": 1000, "max_video_bytes": 1000}
    return BodySizeLimit(app, **{**options, **kwargs})


def test_a_chunked_body_is_counted_and_cut_at_the_limit() -> None:
    app = Recorder()
    chunks = [b"x" * 32 * 1024] * 4  # 128 KiB > 1000 + 64 KiB, with no Content-Length
    sent = asyncio.run(call(limits(app), request({"transfer-encoding": "chunked"}), feeder(chunks)))
    status, problem = status_of(sent)
    assert status == 413
    assert f"more than {1000 + MULTIPART_OVERHEAD} bytes arrived" in problem["detail"]
    assert app.seen[-1] == "http.disconnect"  # the app saw the client gone, answered nothing
    assert sum(m["type"] == "http.response.start" for m in sent) == 1


def test_a_body_longer_than_it_declared_is_cut_too() -> None:
    app = Recorder()
    chunks = [b"x" * 40 * 1024] * 3
    sent = asyncio.run(call(limits(app), request({"content-length": "10"}), feeder(chunks)))
    assert status_of(sent)[0] == 413


def test_a_body_under_the_limit_reaches_the_app() -> None:
    app = Recorder()
    sent = asyncio.run(
        call(limits(app), request({"content-length": "6"}), feeder([b"abc", b"def"]))
    )
    assert status_of(sent)[0] == 200
    assert app.seen == ["http.request", "http.request"]


def test_a_body_that_pauses_is_answered_408() -> None:
    app = Recorder()
    started = time.monotonic()
    sent = asyncio.run(
        call(
            limits(app, body_idle_seconds=0.2),
            request({"content-length": "900"}),
            stalls_after(b"x" * 100),
        )
    )
    status, problem = status_of(sent)
    assert status == 408
    assert "CV_BODY_IDLE_SECONDS" in problem["detail"]
    assert time.monotonic() - started < 2


def test_uploads_beyond_the_bound_are_503_with_retry_after_and_gets_pass() -> None:
    async def scenario() -> tuple[list[Message], list[Message], list[Message]]:
        hold = asyncio.Event()
        limit = limits(Recorder(hold), max_concurrent=1)
        first = asyncio.create_task(call(limit, request({"content-length": "3"}), feeder([b"abc"])))
        await asyncio.sleep(0.05)  # the first one is in the app, held
        second = await call(limit, request({"content-length": "3"}), feeder([b"abc"]))
        get = {**request({}), "method": "GET"}
        read = await asyncio.wait_for(call(limits(Recorder()), get, feeder([b""])), 1)
        hold.set()
        return await first, second, read

    first, second, read = asyncio.run(scenario())
    assert status_of(first)[0] == 200
    status, problem = status_of(second)
    assert status == 503
    assert "CV_MAX_CONCURRENT_UPLOADS" in problem["detail"]
    start = next(m for m in second if m["type"] == "http.response.start")
    assert (b"retry-after", b"1") in start["headers"]
    assert status_of(read)[0] == 200


# --- the request-head deadline, on a real server ---------------------------------------


async def hello(scope: Message, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(HeadTimeoutProtocol, "head_timeout_seconds", 0.5)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        hello, host="127.0.0.1", port=port, http=HeadTimeoutProtocol, log_level="warning"
    )
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield port
    running.should_exit = True
    thread.join(10)


def closed_after(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes ``sock`` (reads give b"")."""
    started = time.monotonic()
    sock.settimeout(limit)
    while sock.recv(1024):
        pass
    return time.monotonic() - started


def test_a_trickled_request_head_is_cut_off(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")  # and never the blank line
        assert closed_after(sock, 5) < 3


def test_a_silent_connection_is_cut_off(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        assert closed_after(sock, 5) < 3


def test_whole_requests_are_answered_and_the_next_head_is_timed_too(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.settimeout(5)
        assert b"hello" in sock.recv(4096)
        sock.sendall(b"GET / HTTP/1.1\r\n")  # the next request's head, never finished
        assert closed_after(sock, 5) < 3


def test_a_body_trickled_below_the_minimum_rate_is_answered_408() -> None:
    app = Recorder()
    chunks = [b"x"] * 40  # a byte every 20 ms: 50 B/s, never a pause of 0.2 s
    sent = asyncio.run(
        call(
            limits(app, body_idle_seconds=0.2, body_min_rate=1000),
            request({"content-length": "40"}),
            feeder(chunks, pause=0.02),
        )
    )
    status, problem = status_of(sent)
    assert status == 408
    assert "CV_BODY_MIN_RATE" in problem["detail"]
    assert app.seen.count("http.request") < 40  # cut before the end
