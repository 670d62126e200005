"""Video jobs in the API and the catalogue: options, progress, the first step, rendering.

Media I/O (probe, plan, decode, encode) is tested in test_videos.py; the whole flow on
real servers in tests/integration/test_video.py.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import numpy as np
import pytest

from api.chains import build_video_start
from api.views import progress
from common.catalogue import CatalogueError, load_pipelines
from common.celery_app import make_celery
from common.contract import RENDER_STEMS, STEPS, VIDEO_STEP
from common.settings import Settings
from tests.support.catalogue import CATALOGUE, PIPELINES

JOB = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("name", list(PIPELINES))
def test_every_pipeline_offers_the_video_options_marked_as_such(name: str) -> None:
    options = {o.name: o for o in PIPELINES[name].options}
    assert options["fps"].media == options["max_side"].media == "video"
    assert options["fps"].default is None and options["max_side"].default is None
    described = {o["name"]: o for o in PIPELINES[name].describe()["options"]}
    assert described["fps"]["media"] == "video"
    assert {o["media"] for n, o in described.items() if n not in ("fps", "max_side")} == {"any"}


def test_every_postprocess_step_has_a_video_rendering() -> None:
    from celery_worker.render import RENDERED_STEPS

    postprocess = {s.name for s in STEPS.values() if s.stage == "postprocess"}
    assert postprocess == set(RENDERED_STEPS) == set(RENDER_STEMS)


def test_a_pipeline_may_not_list_the_video_step(tmp_path: Any) -> None:
    path = tmp_path / "pipelines.yaml"
    path.write_text(
        "pipelines:\n  p:\n    model: yolov8n\n"
        f"    steps: [{VIDEO_STEP.name}, inference.detect, postprocess.annotate]\n"
    )
    with pytest.raises(CatalogueError, match="implied for videos"):
        load_pipelines(path, CATALOGUE.models, {})


def test_the_video_start_is_one_task_on_the_preprocess_queue() -> None:
    app = make_celery(replace(Settings(), broker_url="memory://"))
    payload: Any = {"job_id": JOB, "kind": "video", "render": "postprocess.blur-faces"}
    signature = build_video_start(app, payload, f"{JOB}-preprocess")
    assert signature.task == "cv.preprocess.video"
    assert signature.options["queue"] == "preprocess"
    assert signature.options["task_id"] == f"{JOB}-preprocess"
    assert signature.args == (payload,)
    app.close()


def record(state: str, **fields: Any) -> dict[str, Any]:
    return {
        "state": state,
        "steps": [{"name": "preprocess", "started_at": "2026-01-01T00:00:00+00:00"}],
        "finished_at": None,
        **fields,
    }


NOW = datetime.fromisoformat("2026-01-01T00:00:10+00:00")


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (record("running"), None),
        (
            record("running", frames_total="100", chunks_total="4"),
            {"frames_done": 0, "percent": 0.0, "eta_seconds": None},
        ),
        (
            record(
                "running",
                frames_total="100",
                chunks_total="4",
                **{"frames_done:inference": "50", "frames_done:postprocess": "25"},
            ),
            {"frames_done": 25, "percent": 25.0, "eta_seconds": 30.0, "frames_per_second": 2.5},
        ),
        (
            record(
                "succeeded",
                frames_total="100",
                finished_at="2026-01-01T00:00:20+00:00",
                **{"frames_done:postprocess": "100"},
            ),
            {"frames_done": 100, "percent": 100.0, "eta_seconds": 0.0, "frames_per_second": 5.0},
        ),
        (
            record("failed", frames_total="100", **{"frames_done:postprocess": "10"}),
            {"frames_done": 10, "eta_seconds": None},
        ),
    ],
    ids=["image-or-unplanned", "planned", "running", "succeeded", "failed"],
)
def test_progress_of_a_video_job(job: dict[str, Any], expected: dict[str, Any] | None) -> None:
    found = progress(job, now=NOW)
    if expected is None:
        assert found is None
        return
    assert found is not None
    assert {k: found[k] for k in expected} == expected
    assert found["frames_total"] == 100


FRAME = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
BOX = {"box": [40.0, 30.0, 80.0, 70.0], "confidence": 0.9, "class_id": 0, "class_name": "face"}
OPTIONS = {"margin": 0.0, "blur_method": "gaussian", "blur_strength": 50, "draw_labels": True}


@pytest.mark.parametrize("step", ["postprocess.blur-faces", "postprocess.redact"])
def test_hiding_changes_only_the_boxes(step: str) -> None:
    from celery_worker.render import render_frame

    out = render_frame(step, FRAME, [BOX], OPTIONS)
    inside = (slice(30, 70), slice(40, 80))
    assert not np.array_equal(out[inside], FRAME[inside])
    outside = np.ones(FRAME.shape[:2], bool)
    outside[inside] = False
    assert np.array_equal(out[outside], FRAME[outside])


def test_segment_tints_inside_the_polygon_only() -> None:
    from celery_worker.render import render_frame

    detection = {**BOX, "polygons": [[[50, 40], [70, 40], [70, 60], [50, 60]]]}
    out = render_frame("postprocess.segment", FRAME, [detection], {"draw_labels": False})
    assert not np.array_equal(out[45:55, 55:65], FRAME[45:55, 55:65])
    assert np.array_equal(out[:20, :], FRAME[:20, :])  # far from the box and its label


def test_annotate_draws_without_touching_the_input() -> None:
    from celery_worker.render import render_frame

    before = FRAME.copy()
    out = render_frame("postprocess.annotate", FRAME, [BOX], OPTIONS)
    assert np.array_equal(FRAME, before)
    assert not np.array_equal(out, FRAME)
    with pytest.raises(ValueError, match="no video rendering"):
        render_frame("postprocess.nope", FRAME, [], OPTIONS)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from tests.support.videos import moving_shapes

    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    moving_shapes(path, seconds=2, fps=10)
    return path.read_bytes()


def _post(settings: Settings, data: bytes, fields: dict[str, str], name: str = "v.mp4") -> Any:
    from api.app import create_app

    client = create_app(settings).test_client()
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
    from tests.unit.test_api_offline import jpeg

    response = _post(offline_settings, jpeg(), {"pipeline": "detect", "max_side": "64"}, "a.jpg")
    assert response.status_code == 400
    assert "'max_side' applies to videos only" in response.json()["detail"]
