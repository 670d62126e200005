"""Job callbacks: a local receiver gets a POST when a job succeeds or fails, signed the
Standard Webhooks way with the tenant's secret (verified here with the library)."""

from __future__ import annotations

import json
import queue
import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.support.api import run_job, submit
from tests.support.jobs import wait_until
from tests.support.keys import StackKeys

pytestmark = [pytest.mark.broker, pytest.mark.workers]


class Receiver:
    """An HTTP server on 127.0.0.1 that answers ``statuses`` in turn, then 204s."""

    def __init__(self) -> None:
        self.calls: queue.Queue[dict[str, Any]] = queue.Queue()
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 204
                receiver.calls.put(
                    {
                        "path": self.path,
                        "status": status,
                        "json": json.loads(body),
                        "body": body,
                        "headers": dict(self.headers.items()),
                        "content_type": self.headers["Content-Type"],
                    }
                )
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def next_call(self, timeout: float = 30) -> dict[str, Any]:
        return self.calls.get(timeout=timeout)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def test_success_is_posted_to_the_callback(
    api_client: Any, assets: Path, receiver: Receiver
) -> None:
    job = run_job(
        api_client,
        assets / "zidane.jpg",
        {"pipeline": "blur-faces", "callback_url": f"{receiver.url}/hook?x=1"},
    )
    call = receiver.next_call()
    assert call["path"] == "/hook?x=1" and call["content_type"] == "application/json"
    body = call["json"]
    assert body["id"] == job["id"] and body["state"] == "succeeded"
    assert body["links"]["result"] == f"/v1/jobs/{job['id']}/result"
    assert body["links"]["artifacts"] == [
        {"name": "blurred.jpg", "href": f"/v1/jobs/{job['id']}/artifacts/blurred.jpg"}
    ]
    record = wait_until(
        lambda: (j := api_client.get(f"/v1/jobs/{job['id']}").json())["notification"] and j,
        10,
        "the delivery to be recorded",
    )
    assert record["notification"].startswith("delivered (HTTP 204)")
    assert record["callback_url"] == f"{receiver.url}/hook?x=1"


def test_failure_is_posted_and_a_refusing_receiver_gets_retried(
    api_client: Any, assets: Path, receiver: Receiver
) -> None:
    receiver.statuses = [500]
    data = (assets / "bus.jpg").read_bytes()
    response = submit(
        api_client, data[: len(data) // 2], {"pipeline": "blur-faces", "callback_url": receiver.url}
    )
    job_id = response.json()["id"]
    first = receiver.next_call()
    assert first["status"] == 500 and first["json"]["state"] == "failed"
    assert first["json"]["error"]["kind"] == "input"
    second = receiver.next_call(timeout=30)  # retried after the back-off
    assert second["status"] == 204 and second["json"]["id"] == job_id
    wait_until(
        lambda: (api_client.get(f"/v1/jobs/{job_id}").json()["notification"] or "").startswith(
            "delivered"
        ),
        10,
        "the retry to be recorded",
    )


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("file:///etc/passwd", "callback_url"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://0.0.0.0/x", "link-local or special"),
        ("http://10.0.0.1/hook", "private"),  # the stack sets no CV_CALLBACK_HOSTS
        ("http://100.64.0.1/hook", "private"),
        ("http://[::ffff:192.168.1.1]/hook", "private"),
        ("http://[::1", "malformed"),
    ],
)
def test_callback_urls_that_are_refused(
    api_client: Any, assets: Path, url: str, detail: str
) -> None:
    response = submit(
        api_client, assets / "zidane.jpg", {"pipeline": "blur-faces", "callback_url": url}
    )
    assert response.status_code == 400, response.text
    assert detail in response.json()["detail"]


def test_a_failed_delivery_is_recorded_in_general_terms(api_client: Any, assets: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = run_job(
        api_client,
        assets / "zidane.jpg",
        {"pipeline": "blur-faces", "callback_url": f"http://127.0.0.1:{port}/hook"},
    )
    notification = wait_until(
        lambda: api_client.get(f"/v1/jobs/{job['id']}").json()["notification"],
        10,
        "the failed attempt to be recorded",
    )
    # The same words as for a refused address, a timeout or a non-2xx answer.
    assert re.fullmatch(r"not delivered \(attempt \d\); will retry", notification)


def webhook_headers(call: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in call["headers"].items() if k.lower().startswith("webhook-")}


def test_callbacks_are_signed_with_the_tenants_secret(
    api_client: Any, assets: Path, receiver: Receiver, keys: StackKeys
) -> None:
    job = run_job(
        api_client, assets / "zidane.jpg", {"pipeline": "blur-faces", "callback_url": receiver.url}
    )
    call = receiver.next_call()
    sent = webhook_headers(call)
    assert sent["webhook-id"] == f"msg_{job['id']}"
    verifier = Webhook(keys.signing_secrets["acme"])
    assert verifier.verify(call["body"], sent) == call["json"]  # what a receiver does
    # Another tenant's secret does not verify it.
    with pytest.raises(WebhookVerificationError):
        Webhook(keys.signing_secrets["globex"]).verify(call["body"], sent)
    # A body changed on the way does not verify.
    tampered = call["body"].replace(b'"succeeded"', b'"failed"')
    assert tampered != call["body"]
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        verifier.verify(tampered, sent)
    # A callback replayed later (its timestamp ten minutes old, signature still right).
    old = datetime.now(UTC) - timedelta(minutes=10)
    replayed = {
        **sent,
        "webhook-timestamp": str(int(old.timestamp())),
        "webhook-signature": verifier.sign(sent["webhook-id"], old, call["body"].decode()),
    }
    with pytest.raises(WebhookVerificationError, match="too old"):
        verifier.verify(call["body"], replayed)


def test_after_a_rotation_both_secrets_sign_for_the_grace_period(
    client_as: Any, assets: Path, receiver: Receiver, keys: StackKeys
) -> None:
    rotated = client_as("admin").post("/v1/tenants/globex/signing-secret")
    assert rotated.status_code == 201
    new_secret = rotated.json()["signing_secret"]
    run_job(
        client_as("globex"),
        assets / "zidane.jpg",
        {"pipeline": "blur-faces", "callback_url": receiver.url},
    )
    call = receiver.next_call()
    sent = webhook_headers(call)
    assert len(sent["webhook-signature"].split(" ")) == 2
    for secret in (keys.signing_secrets["globex"], new_secret):  # old and new both verify
        assert Webhook(secret).verify(call["body"], sent)["state"] == "succeeded"
    keys.signing_secrets["globex"] = new_secret
