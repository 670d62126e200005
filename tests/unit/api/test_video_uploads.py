"""Video uploads the API refuses before anything is stored (RabbitMQ and Redis unreachable)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import numpy as np
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


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The module of every child the API's probe starts (each one still runs)."""
    from common import sandbox

    started: list[str] = []
    real = sandbox.run

    def spy(module: str, args: list[str], limits: sandbox.Limits) -> Any:
        started.append(module)
        return real(module, args, limits)

    monkeypatch.setattr(sandbox, "run", spy)
    return started


def test_a_video_is_probed_in_one_child(
    offline_settings: Settings, clip: bytes, children: list[str]
) -> None:
    response = _post(offline_settings, clip, {"pipeline": "detect"})
    assert response.status_code == 503, response.text  # past the probe, at Redis
    assert children == ["common.probe"]


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.4 not an image", b"\x47" + bytes(187) * 8, bytes(range(256)) * 64],
    ids=["pdf", "mpeg-ts", "noise"],
)
def test_what_does_not_start_like_a_video_is_415_without_a_child(
    offline_settings: Settings, children: list[str], data: bytes
) -> None:
    response = _post(offline_settings, data, {"pipeline": "detect"})
    assert response.status_code == 415, response.text
    assert "does not start like a video" in response.json()["detail"]
    assert children == []


def test_a_probe_past_its_wall_clock_is_422_without_internals(
    offline_settings: Settings, clip: bytes, children: list[str]
) -> None:
    started = time.monotonic()
    response = _post(
        replace(offline_settings, probe_timeout_seconds=0.01), clip, {"pipeline": "detect"}
    )
    assert time.monotonic() - started < 5
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == "the video could not be probed within its limits"
    assert children == ["common.probe"]


def test_a_codec_outside_the_list_is_415(offline_settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "a.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(3):
            image = np.full((48, 64, 3), 50 * index, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    response = _post(offline_settings, path.read_bytes(), {"pipeline": "detect"}, "a.mkv")
    assert response.status_code == 415, response.text
    assert "video codec (ffv1) is not accepted" in response.json()["detail"]


def test_a_refused_image_format_is_named(offline_settings: Settings) -> None:
    response = _post(offline_settings, b"GIF89a" + b"\0" * 64, {"pipeline": "detect"}, "a.gif")
    assert response.status_code == 415
    assert "GIF images are not supported" in response.json()["detail"]


def test_videos_beyond_the_probe_slots_wait_then_get_503(
    offline_settings: Settings, clip: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from common import probe

    slots = threading.BoundedSemaphore(1)
    slots.acquire()  # the only slot is taken by another upload's probe
    monkeypatch.setattr(probe, "_SLOTS", slots)
    settings = replace(offline_settings, probe_timeout_seconds=0.3)
    started = time.monotonic()
    response = _post(settings, clip, {"pipeline": "detect"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "probing as many videos" in response.json()["detail"]
    assert time.monotonic() - started < 5
