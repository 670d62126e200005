"""End to end through a real gunicorn server (uvicorn workers), as clients use the service."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests
from PIL import Image

from tests.support import stack
from tests.support.images import png_header_only
from tests.support.jobs import wait_for_job
from tests.support.keys import StackKeys, headers

pytestmark = [pytest.mark.broker, pytest.mark.workers, pytest.mark.http]
# Every call sends acme's member key (``_key``), as a client does.
SESSION = requests.Session()


@pytest.fixture(autouse=True)
def _key(keys: StackKeys) -> None:
    SESSION.headers.update(headers(keys.acme))


def post(
    base: str,
    content: bytes,
    fields: dict[str, str],
    name: str = "photo.jpg",
    content_type: str = "image/jpeg",
) -> requests.Response:
    return SESSION.post(
        f"{base}/v1/jobs", files={"file": (name, content, content_type)}, data=fields, timeout=30
    )


def poll(base: str, job_id: str) -> dict[str, Any]:
    return wait_for_job(
        lambda j: SESSION.get(f"{base}/v1/jobs/{j}", timeout=10).json(), job_id, timeout=90
    )


def problem(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


@pytest.mark.parametrize(
    ("pipeline", "artifact"), [("detect", "annotated.jpg"), ("blur-faces", "blurred.jpg")]
)
def test_submit_poll_result_artifact(
    http_api: str, assets: Path, pipeline: str, artifact: str
) -> None:
    started = time.perf_counter()
    response = post(http_api, (assets / "zidane.jpg").read_bytes(), {"pipeline": pipeline})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["state"] == "queued" and accepted["pipeline"] == pipeline
    assert response.headers["Location"] == f"/v1/jobs/{accepted['id']}"
    assert accepted["submitted_at"]

    job = poll(http_api, accepted["id"])
    assert job["state"] == "succeeded", job["error"]
    assert time.perf_counter() - started < 60
    result = SESSION.get(http_api + job["links"]["result"], timeout=10)
    assert result.status_code == 200 and result.headers["content-type"] == "application/json"
    document = result.json()
    assert document["image"] == {"width": 1280, "height": 720}
    assert document["detections"], "both models find something on zidane.jpg"
    assert [a["name"] for a in job["links"]["artifacts"]] == [artifact]
    download = SESSION.get(http_api + job["links"]["artifacts"][0]["href"], timeout=10)
    assert download.status_code == 200 and download.headers["content-type"] == "image/jpeg"
    decoded = cv2.imdecode(np.frombuffer(download.content, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (720, 1280, 3)


def test_error_statuses(http_api: str, assets: Path) -> None:
    photo = (assets / "zidane.jpg").read_bytes()
    assert "is not one of" in problem(post(http_api, photo, {"pipeline": "sharpen"}), 400)["detail"]
    problem(post(http_api, photo, {"pipeline": "detect", "blur_method": "pixelate"}), 400)
    problem(
        post(
            http_api, b"%PDF-1.4 not an image", {"pipeline": "detect"}, "a.pdf", "application/pdf"
        ),
        415,
    )
    problem(
        post(http_api, png_header_only(50_000, 50_000), {"pipeline": "detect"}, "bomb.png"), 422
    )
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 3200)).save(buffer, "PNG")  # 12.8 MP > the 12 MP test limit
    problem(post(http_api, buffer.getvalue(), {"pipeline": "detect"}, "big.png"), 422)
    too_big = photo + b"\0" * (3 * 1024 * 1024)  # the test limit is 2 MiB
    assert "limited to" in problem(post(http_api, too_big, {"pipeline": "detect"}), 413)["detail"]
    missing = "0" * 32
    problem(SESSION.get(f"{http_api}/v1/jobs/{missing}", timeout=10), 404)
    problem(SESSION.get(f"{http_api}/v1/jobs/{missing}/result", timeout=10), 404)
    problem(SESSION.get(f"{http_api}/v1/jobs/{missing}/artifacts/x.jpg", timeout=10), 404)
    problem(SESSION.delete(f"{http_api}/v1/jobs/{missing}", timeout=10), 404)


def test_cancel_through_http(http_api: str, assets: Path) -> None:
    image = cv2.resize(cv2.imread(str(assets / "bus.jpg")), (2048, 2730))
    data = cv2.imencode(".jpg", image)[1].tobytes()
    ids = [
        post(http_api, data, {"pipeline": "detect", "image_size": "2048"}).json()["id"]
        for _ in range(2)
    ]
    assert SESSION.delete(f"{http_api}/v1/jobs/{ids[1]}", timeout=10).status_code == 204
    job = SESSION.get(f"{http_api}/v1/jobs/{ids[1]}", timeout=10).json()
    assert job["state"] == "cancelled"
    assert poll(http_api, ids[0])["state"] == "succeeded"


def test_swagger_ui_and_spec(http_api: str) -> None:
    root = SESSION.get(http_api + "/", timeout=10)
    assert root.status_code == 200 and "swagger-ui" in root.text
    spec = SESSION.get(http_api + "/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.0")
    assert SESSION.get(http_api + "/ui/swagger-ui-bundle.js", timeout=10).status_code == 200
    ready = SESSION.get(http_api + "/health/ready", timeout=10).json()
    assert ready["checks"]["redis"]["ok"] and ready["checks"]["rabbitmq"]["ok"]


def test_broker_and_redis_down_give_503_and_keep_nothing(
    stack_env: dict[str, str],
    stack_dir: Path,
    assets: Path,
) -> None:
    """A second server whose RabbitMQ and Redis addresses do not answer."""
    storage = stack_dir / "offline-storage"
    env = {**stack_env, "CV_STORAGE_DIR": str(storage)}
    photo = (assets / "zidane.jpg").read_bytes()
    logs = stack_dir / "logs-offline"
    logs.mkdir(exist_ok=True)

    # RabbitMQ down, Redis up: the record is written, the publish fails, both are undone.
    broker_down = {**env, "CV_BROKER_URL": stack.broker_url("/", port=1, password=False)}
    with stack.gunicorn(broker_down, logs, ready_status=503) as base:
        assert SESSION.get(f"{base}/health/ready", timeout=10).json()["checks"]["redis"]["ok"]
        before = SESSION.get(f"{base}/v1/jobs", timeout=10).json()["total"]
        assert "broker" in problem(post(base, photo, {"pipeline": "blur-faces"}), 503)["detail"]
        assert SESSION.get(f"{base}/v1/jobs", timeout=10).json()["total"] == before
    assert not [p for p in storage.rglob("*") if p.is_file()]

    redis_down = {**env, "CV_REDIS_URL": stack.redis_url(0, port=1, password=False)}
    with stack.gunicorn(redis_down, logs, ready_status=503) as base:
        assert "Redis" in problem(post(base, photo, {"pipeline": "blur-faces"}), 503)["detail"]
        problem(SESSION.get(f"{base}/v1/jobs", timeout=10), 503)
    assert not [p for p in storage.rglob("*") if p.is_file()]


def test_a_video_job_over_http(http_api: str, tmp_path: Path) -> None:
    """A video through the real server: progress while it runs, an MP4 that browsers play."""
    from tests.support.videos import moving_shapes

    source = tmp_path / "clip.mov"
    moving_shapes(source, seconds=2, fps=15)
    response = post(http_api, source.read_bytes(), {"pipeline": "blur-faces", "fps": "5"}, "c.mov")
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["input"]["kind"] == "video" and accepted["input"]["format"] == "mov"
    assert accepted["input"]["video"]["frames"] == 30
    job = poll(http_api, accepted["id"])
    assert job["state"] == "succeeded", job["error"]
    assert job["progress"]["frames_done"] == job["progress"]["frames_total"] == 10
    assert job["progress"]["percent"] == 100.0
    links = {a["name"]: a for a in job["links"]["artifacts"]}
    video = SESSION.get(http_api + links["blurred.mp4"]["href"], timeout=10)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.content[4:8] == b"ftyp" and video.content.find(b"moov") < video.content.find(
        b"mdat"
    ), "faststart: the index comes first, so browsers play while downloading"
    problem(post(http_api, source.read_bytes()[:2000], {"pipeline": "blur-faces"}, "c.mov"), 415)
