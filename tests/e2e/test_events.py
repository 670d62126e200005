"""Live events end to end through the real gunicorn server: SSE and the WebSocket."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.keys import StackKeys, headers

pytestmark = [pytest.mark.broker, pytest.mark.workers, pytest.mark.http]
FLOW = [
    "job.created",
    "step.started",
    "step.finished",
    "step.started",
    "step.finished",
    "step.started",
    "step.finished",
    "job.succeeded",
]


def sse(response: requests.Response) -> Iterator[dict[str, Any]]:
    """The messages of an SSE response (comments skipped), as they arrive."""
    message: dict[str, Any] = {}
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if "data" in message:
                yield message
            message = {}
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(": ")
            message[name] = json.loads(value) if name == "data" else value


class Collector:
    """Reads an SSE stream in a thread; ``until`` waits for an event."""

    def __init__(self, url: str, key: str, last_event_id: str | None = None) -> None:
        extra = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self.response = requests.get(
            url, headers={**headers(key), **extra}, stream=True, timeout=60
        )
        self.events: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for message in sse(self.response):
                self.events.append(message)
        except (requests.RequestException, AttributeError, ValueError):
            pass  # closed by the test

    def until(self, predicate: Any, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not any(predicate(m) for m in self.events):
            assert time.monotonic() < deadline, f"not seen in {timeout} s: {self.events[-5:]}"
            time.sleep(0.05)

    def close(self) -> None:
        self.response.close()


def submit(base: str, key: str, assets: Path) -> str:
    response = requests.post(
        f"{base}/v1/jobs",
        headers=headers(key),
        files={"file": ("bus.jpg", (assets / "bus.jpg").read_bytes(), "image/jpeg")},
        data={"pipeline": "detect"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_sse_gets_a_jobs_events_in_order_and_replays_from_last_event_id(
    http_api: str, keys: StackKeys, assets: Path
) -> None:
    ours = Collector(f"{http_api}/v1/events", keys.acme)
    theirs = Collector(f"{http_api}/v1/events", keys.globex)
    assert ours.response.status_code == 200
    assert ours.response.headers["content-type"].startswith("text/event-stream")
    try:
        time.sleep(0.5)  # both streams are open before the job starts
        job_id = submit(http_api, keys.acme, assets)
        ours.until(lambda m: m["data"]["job"] == job_id and m["event"] == "job.succeeded")
        mine = [m for m in ours.events if m["data"]["job"] == job_id]
        assert [m["event"] for m in mine] == FLOW
        assert [m["data"]["data"].get("step") for m in mine if m["event"] == "step.finished"] == [
            "preprocess",
            "inference",
            "postprocess",
        ]
        assert all(m["id"] == m["data"]["id"] for m in mine)
        assert not any(m["data"]["job"] == job_id for m in theirs.events)
    finally:
        ours.close()
        theirs.close()

    replay = Collector(f"{http_api}/v1/events?job={job_id}", keys.acme, mine[2]["id"])
    try:
        replay.until(lambda m: m["event"] == "job.succeeded", timeout=10)
        assert [m["id"] for m in replay.events] == [m["id"] for m in mine[3:]]
    finally:
        replay.close()


def test_another_tenants_job_is_404_and_a_bad_last_event_id_400(
    http_api: str, keys: StackKeys, assets: Path
) -> None:
    job_id = submit(http_api, keys.acme, assets)
    response = requests.get(
        f"{http_api}/v1/events?job={job_id}", headers=headers(keys.globex), timeout=10
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    missing = requests.get(
        f"{http_api}/v1/events?job={'0' * 32}", headers=headers(keys.globex), timeout=10
    )
    assert missing.status_code == 404 and missing.json()["detail"].startswith("no job")
    assert requests.get(f"{http_api}/v1/events", timeout=10).status_code == 401
    assert (
        requests.get(f"{http_api}/v1/ws", headers=headers(keys.acme), timeout=10).status_code == 426
    )


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/v1/ws"


def receive(socket: ClientConnection, timeout: float = 30) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(socket.recv(timeout=timeout))
    return document


def test_websocket_auth_message_subscribe_and_events(
    http_api: str, keys: StackKeys, assets: Path
) -> None:
    with connect(ws_url(http_api)) as socket:
        socket.send(json.dumps({"type": "auth", "key": keys.acme}))
        assert receive(socket) == {"type": "ready", "tenant": "acme", "role": "member"}
        job_id = submit(http_api, keys.acme, assets)
        socket.send(json.dumps({"type": "subscribe", "job": job_id, "last_event_id": "0-0"}))
        assert receive(socket)["type"] == "subscribed"
        seen: list[str] = []
        while "job.succeeded" not in seen:
            message = receive(socket, 90)
            assert message["type"] == "event" and message["event"]["job"] == job_id
            seen.append(message["event"]["type"])
        assert seen == FLOW
        socket.send(json.dumps({"type": "subscribe", "job": "f" * 32}))
        assert receive(socket)["status"] == 404


def test_websocket_key_as_subprotocol_and_revoked_key_closes(
    http_api: str, stack_store: Any
) -> None:
    key, secret = stack_store.apikeys.create("acme", "tests ws revoke", "reader")
    with connect(ws_url(http_api), subprotocols=["cvjobs", secret]) as socket:  # type: ignore[list-item]
        assert socket.subprotocol == "cvjobs"
        assert receive(socket)["type"] == "ready"
        socket.send(json.dumps({"type": "subscribe"}))
        assert receive(socket)["type"] == "subscribed"
        stack_store.apikeys.revoke(key.id)
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                socket.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert time.monotonic() - started < 5
    with connect(ws_url(http_api)) as socket:
        socket.send(json.dumps({"type": "auth", "key": secret}))
        with pytest.raises(ConnectionClosed):
            socket.recv(timeout=10)
