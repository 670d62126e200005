"""Submitting and reading jobs through the in-process API client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.jobs import wait_for_job
from tests.support.keys import OFFLINE_KEY, headers, offline_keys


def submit(client: Any, image: Path | bytes, fields: dict[str, Any], name: str = "") -> Any:
    data = image.read_bytes() if isinstance(image, Path) else image
    filename = name or (image.name if isinstance(image, Path) else "upload.jpg")
    form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
    return client.post("/v1/jobs", files={"file": (filename, data, "image/jpeg")}, data=form)


def run_job(
    client: Any, image: Path | bytes, fields: dict[str, Any], timeout: float = 90
) -> dict[str, Any]:
    response = submit(client, image, fields)
    assert response.status_code == 202, response.text
    return wait_for_job(
        lambda j: client.get(f"/v1/jobs/{j}").json(), response.json()["id"], timeout
    )


def assert_problem(response: Any, status: int, detail: str) -> None:
    """A problem+json answer with this status whose detail says ``detail``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert detail in body["detail"]


def offline_app(settings: Any) -> Any:
    """A test client of an app whose Redis and RabbitMQ are down, sending a member key
    of a key table in memory (auth still runs: only the table is not Redis)."""
    from api.app import create_app

    client = create_app(settings, keys=offline_keys()).test_client(base_url="http://localhost")
    client.headers.update(headers(OFFLINE_KEY))
    return client
