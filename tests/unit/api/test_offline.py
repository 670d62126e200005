"""Every refusal the API makes before touching RabbitMQ or Redis, and the 503s when they are down.

The app here points at ports where nothing listens; a refusal must leave no file behind.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from common.settings import Settings
from tests.support.api import assert_problem, offline_app
from tests.support.images import jpeg, png_bytes, png_header_only


def post(client: Any, data: bytes, fields: dict[str, str], name: str = "x.jpg") -> Any:
    return client.post("/v1/jobs", files={"file": (name, data, "image/jpeg")}, data=fields)


def stored_files(settings: Settings) -> list[Path]:
    return [p for p in settings.resolve(settings.storage_dir).rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("fields", "status", "detail"),
    [
        ({"pipeline": "nope"}, 400, "'nope' is not one of ['detect', 'segment', 'blur-faces'"),
        ({}, 400, "'pipeline' is a required property"),
        ({"pipeline": "blur-faces", "confidence": "0.5"}, 400, "has no option 'confidence'"),
        ({"pipeline": "detect", "confidence": "1.5"}, 400, "1.5 is greater than the maximum"),
        ({"pipeline": "detect", "colour": "red"}, 400, "colour"),
        ({"pipeline": "detect", "image_size": "65"}, 400, "multiple of 32"),
    ],
)
def test_bad_requests(
    offline_client: Any,
    offline_settings: Settings,
    fields: dict[str, str],
    status: int,
    detail: str,
) -> None:
    assert_problem(post(offline_client, jpeg(), fields), status, detail)
    assert stored_files(offline_settings) == []


def test_missing_file(offline_client: Any) -> None:
    response = offline_client.post("/v1/jobs", files={"pipeline": (None, "detect")})
    assert_problem(response, 400, "'file' is a required property")


def test_form_encoded_body_is_415(offline_client: Any) -> None:
    response = offline_client.post("/v1/jobs", data={"pipeline": "detect"})
    assert_problem(response, 415, "multipart/form-data")


def test_not_an_image_is_415(offline_client: Any, offline_settings: Settings) -> None:
    assert_problem(
        post(offline_client, b"just text", {"pipeline": "detect"}, "a.txt"),
        415,
        "neither an image nor a video",
    )
    assert stored_files(offline_settings) == []


def test_too_many_pixels_is_422(tmp_path: Path, offline_settings: Settings) -> None:
    client = offline_app(replace(offline_settings, max_image_pixels=1000))
    assert_problem(
        post(client, png_bytes(40, 30), {"pipeline": "detect"}),
        422,
        "40x30 = 1200 pixels; the limit is 1000",
    )
    assert stored_files(offline_settings) == []


def test_decompression_bomb_is_422_without_decoding(offline_client: Any) -> None:
    bomb = png_header_only(100_000, 100_000)
    assert len(bomb) < 100
    assert_problem(post(offline_client, bomb, {"pipeline": "detect"}), 422, "pixels")


def test_upload_over_the_limit_is_413(offline_settings: Settings) -> None:
    client = offline_app(replace(offline_settings, max_upload_bytes=200_000))
    big = jpeg() + b"\0" * 300_000
    assert_problem(post(client, big, {"pipeline": "detect"}), 413, "limited to 200000 bytes")
    assert stored_files(offline_settings) == []


def test_upload_just_over_the_limit_inside_the_envelope_slack_is_413(
    offline_settings: Settings,
) -> None:
    # Over the file limit but under limit + multipart slack: the handler measures the file.
    client = offline_app(replace(offline_settings, max_upload_bytes=20_000))
    response = post(client, jpeg() + b"\0" * 25_000, {"pipeline": "blur-faces"})
    assert_problem(response, 413, "limited to 20000 bytes (CV_MAX_UPLOAD_BYTES)")
    assert stored_files(offline_settings) == []


def test_redis_down_is_503_and_keeps_nothing(
    offline_client: Any, offline_settings: Settings
) -> None:
    assert_problem(post(offline_client, jpeg(), {"pipeline": "blur-faces"}), 503, "Redis")
    assert stored_files(offline_settings) == []
    assert_problem(offline_client.get("/v1/jobs/" + "a" * 32), 503, "Redis")
    assert_problem(offline_client.get("/v1/jobs"), 503, "Redis")


def test_health(offline_client: Any) -> None:
    assert offline_client.get("/health/live").json() == {"status": "ok"}
    ready = offline_client.get("/health/ready")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert not checks["redis"]["ok"] and not checks["rabbitmq"]["ok"]
    assert {check["detail"] for check in checks.values()} == {"does not answer"}


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/" + "a" * 32, "/health/ready"])
def test_errors_name_no_host_port_or_exception(offline_client: Any, path: str) -> None:
    # The servers are unreachable at 127.0.0.1:1; what the client reads must not say so.
    text = offline_client.get(path).text
    assert "does not answer" in text
    for leak in ("127.0.0.1", ":1", "Error", "Connection refused", "errno"):
        assert leak not in text


def test_huge_offset_is_refused_by_the_spec(offline_client: Any) -> None:
    # It used to reach Redis (and come back a 503); the spec bounds it now.
    assert_problem(
        offline_client.get("/v1/jobs?offset=" + "9" * 20),
        400,
        "greater than the maximum of 100000000",
    )
    assert offline_client.get("/v1/jobs?offset=100000000").status_code == 503  # in bounds


@pytest.mark.parametrize(
    "path",
    ["/v1/jobs/not-a-job-id", "/v1/jobs/" + "A" * 32 + "/result", "/v1/jobs/" + "a" * 31],
)
def test_malformed_job_ids_are_refused_by_the_spec(offline_client: Any, path: str) -> None:
    # The spec's pattern refuses them before any handler (or Redis) is reached.
    assert_problem(offline_client.get(path), 400, "does not match")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("put", "/v1/jobs", "GET, POST, HEAD"),
        ("patch", "/v1/jobs/" + "a" * 32, "GET, DELETE, HEAD"),
        ("delete", "/v1/pipelines", "GET, HEAD"),
        ("post", "/v1/tenants/acme", "GET, PATCH, HEAD"),
    ],
)
def test_405_names_every_method_of_the_path(
    offline_client: Any, method: str, path: str, allow: str
) -> None:
    # Flask's own header named only the methods of the first rule that matched.
    response = getattr(offline_client, method)(path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
