"""Video uploads the API refuses before anything is stored (RabbitMQ and Redis unreachable)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from common.settings import Settings
from tests.support.api import offline_app
from tests.support.images import jpeg


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from tests.support.videos import moving_shapes

    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    moving_shapes(path, seconds=2, fps=10)
    return path.read_bytes()


def _post(settings: Settings, data: bytes, fields: dict[str, str], name: str = "v.mp4") -> Any:

    client = offline_app(settings)
    return client.post("/v1/jobs", files={"file": (name, data, "video/mp4")}, data=fields)


@pytest.mark.parametrize(
    ("change", "fields", "status", "detail"),
    [
        ({"max_video_seconds": 1.0}, {"pipeline": "detect"}, 422, "the limit is 1"),
        ({"max_image_pixels": 1000}, {"pipeline": "detect"}, 422, "pixels"),
        ({"max_video_bytes": 1000}, {"pipeline": "detect"}, 413, "CV_MAX_VIDEO_BYTES"),
        ({}, {"pipeline": "detect", "fps": "0"}, 400, "less than the minimum"),
        ({}, {"pipeline": "detect", "max_side": "8"}, 400, "less than the minimum"),
    ],
    ids=["too-long", "frame-too-large", "too-many-bytes", "fps-zero", "tiny-side"],
)
def test_videos_refused_before_anything_is_stored(
    offline_settings: Settings,
    clip: bytes,
    change: dict[str, Any],
    fields: dict[str, str],
    status: int,
    detail: str,
) -> None:
    response = _post(replace(offline_settings, **change), clip, fields)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]
    storage = offline_settings.resolve(offline_settings.storage_dir)
    assert not [p for p in storage.rglob("*") if p.is_file()]


def test_a_valid_video_reaches_the_job_store(offline_settings: Settings, clip: bytes) -> None:
    # Past every check: the first thing it needs is Redis, which is down here (503).
    response = _post(offline_settings, clip, {"pipeline": "blur-faces", "fps": "5"})
    assert response.status_code == 503, response.text


def test_video_options_with_an_image_are_refused(offline_settings: Settings) -> None:
    response = _post(offline_settings, jpeg(), {"pipeline": "detect", "max_side": "64"}, "a.jpg")
    assert response.status_code == 400
    assert "'max_side' applies to videos only" in response.json()["detail"]
