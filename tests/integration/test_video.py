"""Video jobs through the real RabbitMQ, Redis and worker processes.

The test stack cuts videos into chunks of 8 frames with 2 chunks in flight
(tests/support/stack.py), so these short videos cross several chunk boundaries
and exercise the window. Videos are generated here (tests/support/videos.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from celery_worker.imaging import widen
from celery_worker.samples import face_crop, sliding_face
from tests.support import stack
from tests.support.api import submit
from tests.support.jobs import wait_for_job, wait_until
from tests.support.videos import (
    corrupt_middle,
    moving_shapes,
    truncate,
)

pytestmark = [pytest.mark.broker, pytest.mark.workers]


def read_video(data: bytes, tmp: Path) -> tuple[list[np.ndarray], list[float]]:
    """Every frame (BGR) of an MP4 and its time in seconds."""
    path = tmp / f"out-{len(data)}.mp4"
    path.write_bytes(data)
    frames, times = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="bgr24"))
            times.append(float(frame.pts * stream.time_base))
    return frames, times


def run_video(
    client: Any, path: Path, fields: dict[str, Any], timeout: float = 240
) -> dict[str, Any]:
    response = submit(client, path.read_bytes(), fields, name=path.name)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["input"]["kind"] == "video"
    return wait_for_job(lambda j: client.get(f"/v1/jobs/{j}").json(), job["id"], timeout)


def artifact(client: Any, job: dict[str, Any], name: str) -> bytes:
    response = client.get(f"/v1/jobs/{job['id']}/artifacts/{name}")
    assert response.status_code == 200, (name, response.text)
    return bytes(response.content)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255**2 / error))


def sharpness(region: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(cv2.cvtColor(region, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def iou(a: Any, b: Any) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def test_blur_faces_hides_the_face_in_every_frame_and_leaves_the_rest(
    api_client: Any, assets: Path, tmp_path: Path
) -> None:
    """A real face (from zidane.jpg) slides across the frame; MTCNN, real weights."""
    source = tmp_path / "face.mp4"
    truth = sliding_face(source, face_crop(assets), seconds=3, fps=10)
    job = run_video(api_client, source, {"pipeline": "blur-faces", "margin": 0.2})
    assert job["state"] == "succeeded", job["error"]
    assert job["progress"]["frames_done"] == job["progress"]["frames_total"] == len(truth)
    result = api_client.get(f"/v1/jobs/{job['id']}/result").json()
    assert result["kind"] == "video" and result["video"]["frames"] == len(truth)
    assert result["video"]["chunks"] >= -(-len(truth) // 8)  # chunks of at most 8 frames
    names = {a["name"] for a in result["artifacts"]}
    assert {"blurred.mp4", "frames.json", "thumbnails.jpg"} <= names

    frames = json.loads(artifact(api_client, job, "frames.json"))
    assert [f["index"] for f in frames] == list(range(len(truth)))
    inputs, _ = read_video(source.read_bytes(), tmp_path)
    outputs, times = read_video(artifact(api_client, job, "blurred.mp4"), tmp_path)
    assert len(outputs) == len(truth)
    np.testing.assert_allclose(times, [k / 10 for k in range(len(truth))], atol=1e-6)

    height, width = inputs[0].shape[:2]
    visible = [k for k, box in enumerate(truth) if box and box[0] >= 0 and box[2] <= width]
    assert len(visible) >= 10, "the face must be fully in view in many frames"
    track_ids = set()
    for k in visible:
        faces = [d for d in frames[k]["detections"] if iou(d["box"], truth[k]) > 0.5]
        assert faces, f"frame {k}: the face was not found"
        track_ids.add(faces[0]["track_id"])
        x1, y1, x2, y2 = truth[k]
        inner = (slice(y1 + 4, y2 - 4), slice(x1 + 4, x2 - 4))
        before, after = sharpness(inputs[k][inner]), sharpness(outputs[k][inner])
        assert after < 0.2 * before, f"frame {k}: face sharpness {before:.0f} -> {after:.0f}"
    assert len(track_ids) == 1 and None not in track_ids, f"one face, one track: {track_ids}"

    for k, (original, hidden) in enumerate(zip(inputs, outputs, strict=True)):
        keep = np.ones((height, width), bool)
        boxes = np.asarray([d["box"] for d in frames[k]["detections"]]).reshape(-1, 4)
        for x1, y1, x2, y2 in widen(boxes, 0.2 + 0.05, width, height):
            keep[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = False
        assert psnr(original[keep], hidden[keep]) > 32, f"frame {k} changed outside the faces"
    assert result["summary"]["unique_tracks"].get("face") >= 1


def test_decimation_keeps_every_third_frame_across_chunk_boundaries(
    api_client: Any, tmp_path: Path
) -> None:
    """30 fps -> fps 10: output frame k is source frame 3k, each exactly once, at k/10 s."""
    source = tmp_path / "shapes.mp4"
    moving_shapes(source, seconds=3, fps=30)
    job = run_video(api_client, source, {"pipeline": "blur-faces", "fps": 10})
    assert job["state"] == "succeeded", job["error"]
    result = api_client.get(f"/v1/jobs/{job['id']}/result").json()
    assert result["video"]["frames"] == 30 and result["video"]["fps"] == 10
    frames = json.loads(artifact(api_client, job, "frames.json"))
    assert [f["index"] for f in frames] == list(range(30))
    np.testing.assert_allclose([f["time"] for f in frames], [k / 10 for k in range(30)])
    np.testing.assert_allclose(
        [f["source_time"] for f in frames], [3 * k / 30 for k in range(30)], atol=1e-6
    )
    inputs, _ = read_video(source.read_bytes(), tmp_path)
    outputs, times = read_video(artifact(api_client, job, "blurred.mp4"), tmp_path)
    assert len(outputs) == 30
    np.testing.assert_allclose(times, [k / 10 for k in range(30)], atol=1e-6)
    for k, frame in enumerate(outputs):
        scores = {j: psnr(frame, inputs[j]) for j in (3 * k - 1, 3 * k, 3 * k + 1) if 0 <= j < 90}
        assert max(scores, key=scores.__getitem__) == 3 * k, (k, scores)
        assert scores[3 * k] > 32


def direct_predict(weights: Path, frame: np.ndarray) -> Any:
    from ultralytics import YOLO

    return YOLO(str(weights)).predict(frame, device="cpu", verbose=False)[0]


def test_detect_on_video_equals_a_direct_call_on_each_frame(
    api_client: Any, assets: Path, yolo_weights: Path, tmp_path: Path
) -> None:
    """A pan over bus.jpg; every frame's boxes equal Ultralytics' own, with track ids."""
    import cv2

    source = tmp_path / "pan.mkv"
    photo = cv2.imread(str(assets / "bus.jpg"))
    _pan(source, photo, frames=12)
    job = run_video(api_client, source, {"pipeline": "detect"})
    assert job["state"] == "succeeded", job["error"]
    frames = json.loads(artifact(api_client, job, "frames.json"))
    inputs, _ = read_video(source.read_bytes(), tmp_path)
    assert len(frames) == len(inputs) == 12
    fired = 0
    for k in (0, 7, 8, 11):  # both sides of the first chunk boundary
        expected = direct_predict(yolo_weights, inputs[k])
        found = frames[k]["detections"]
        assert len(found) == len(expected.boxes), k
        fired += len(found)
        if found:
            np.testing.assert_allclose(
                [d["box"] for d in found], expected.boxes.xyxy.numpy(), atol=0.02
            )
            assert [d["class_id"] for d in found] == expected.boxes.cls.int().tolist()
    assert fired > 0, "the test model must fire on this photo"
    tracked = [d for f in frames for d in f["detections"] if d["track_id"] is not None]
    assert tracked, "some detections are tracked"
    result = api_client.get(f"/v1/jobs/{job['id']}/result").json()
    assert {t["id"] for t in result["tracks"]} == {d["track_id"] for d in tracked}


def _pan(path: Path, photo: np.ndarray, frames: int) -> None:
    """A 640x480 window sliding over a photo, 10 fps, near-lossless H.264."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.options = {"crf": "10", "g": "10"}
        for k in range(frames):
            window = np.ascontiguousarray(photo[100 : 100 + 480, 4 * k : 4 * k + 640])
            for packet in stream.encode(av.VideoFrame.from_ndarray(window, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize(
    ("pipeline", "main"),
    [
        ("detect", "annotated.mp4"),
        ("segment", "overlay.mp4"),
        ("redact", "redacted.mp4"),
        ("detect-crops", "annotated.mp4"),
    ],
)
def test_every_pipeline_runs_on_video(
    api_client: Any, tmp_path: Path, pipeline: str, main: str
) -> None:
    source = tmp_path / "shapes.webm"
    moving_shapes(source, seconds=2, fps=10)
    fields: dict[str, Any] = {"pipeline": pipeline, "max_side": 160}
    if pipeline == "segment":
        # The test weights fire everywhere: 300 masks a frame took 3.5 min on 2 cores.
        fields["max_detections"] = 20
    job = run_video(api_client, source, fields)
    assert job["state"] == "succeeded", job["error"]
    result = api_client.get(f"/v1/jobs/{job['id']}/result").json()
    assert result["image"] == {"width": 160, "height": 120}
    outputs, _ = read_video(artifact(api_client, job, main), tmp_path)
    assert len(outputs) == result["video"]["frames"] == 20
    assert outputs[0].shape == (120, 160, 3)
    assert len(json.loads(artifact(api_client, job, "frames.json"))) == 20
    if pipeline == "detect-crops":
        listing = json.loads(artifact(api_client, job, "crops.json"))
        crops, tracks = listing["crops"], result["tracks"]
        # One crop per track, at most CV_MAX_CROPS, of the most confident tracks.
        assert len(crops) == min(len(tracks), listing["limit"])
        assert result["crops"]["truncated"] is (len(tracks) > listing["limit"])
        kept = {crop["track"]["id"] for crop in crops}
        confidence = {t["id"]: t["best"]["confidence"] for t in tracks}
        left_out = [c for tid, c in confidence.items() if tid not in kept]
        assert not left_out or min(confidence[t] for t in kept) >= max(left_out)
        for crop in crops:
            assert artifact(api_client, job, crop["file"])[:2] == b"\xff\xd8"


def test_a_corrupt_video_ends_with_named_frames_or_a_reason(
    api_client: Any, tmp_path: Path
) -> None:
    clean = tmp_path / "clean.mp4"
    moving_shapes(clean, seconds=4, fps=10)
    broken = tmp_path / "broken.mp4"
    corrupt_middle(clean, broken)
    job = run_video(api_client, broken, {"pipeline": "blur-faces"}, timeout=120)
    assert job["state"] in ("succeeded", "failed"), job
    if job["state"] == "failed":
        assert job["error"]["kind"] == "input" and job["error"]["detail"]
        return
    result = api_client.get(f"/v1/jobs/{job['id']}/result").json()
    video = result["video"]
    named = video["frames_missing"] + video["frames_damaged"]
    assert named or video["warnings"], "a corrupt file must name what it lost"
    frames = json.loads(artifact(api_client, job, "frames.json"))
    assert len(frames) == video["frames"]
    for index in video["frames_missing"]:
        assert frames[index]["decoded"] is False


def test_a_truncated_video_is_refused_or_names_what_it_lost(
    api_client: Any, tmp_path: Path
) -> None:
    clean = tmp_path / "clean.mkv"
    moving_shapes(clean, seconds=4, fps=10)
    cut = tmp_path / "cut.mkv"
    truncate(clean, cut, 0.5)
    response = submit(api_client, cut.read_bytes(), {"pipeline": "blur-faces"}, name=cut.name)
    if response.status_code == 415:
        assert response.headers["content-type"] == "application/problem+json"
        return
    assert response.status_code == 202, response.text
    job = wait_for_job(lambda j: api_client.get(f"/v1/jobs/{j}").json(), response.json()["id"], 120)
    assert job["state"] in ("succeeded", "failed"), job
    if job["state"] == "succeeded":
        result = api_client.get(f"/v1/jobs/{job['id']}/result").json()
        assert result["video"]["frames"] < 40 or result["video"]["warnings"]


def test_image_options_for_videos_only_are_refused(api_client: Any, assets: Path) -> None:
    response = submit(api_client, assets / "bus.jpg", {"pipeline": "detect", "fps": 5})
    assert response.status_code == 400
    assert "videos only" in response.json()["detail"]


def test_a_worker_killed_mid_video_loses_no_frame(
    api_client: Any, assets: Path, workers: dict[str, Any], stack_settings: Any, tmp_path: Path
) -> None:
    """kill -9 of the inference process mid-chunk: that chunk is redelivered, nothing lost."""
    import redis

    source = tmp_path / "long.mp4"
    truth = sliding_face(source, face_crop(assets), seconds=6, fps=10, size=(1280, 720))
    response = submit(api_client, source.read_bytes(), {"pipeline": "blur-faces"}, name="a.mp4")
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    get = lambda: api_client.get(f"/v1/jobs/{job_id}").json()  # noqa: E731
    seen: list[dict[str, Any]] = []

    def watch() -> dict[str, Any]:
        job = get()
        if job["progress"]:
            seen.append(job["progress"])
        return job

    def inferring() -> bool:
        """A chunk through inference and the next decoded but not inferred: the inference
        process is on it (a kill between chunks, while it waited for a decoded one, would
        lose nothing and prove nothing)."""
        progress = watch()["progress"]
        if not progress:
            return False
        done = progress["frames_by_stage"]
        return bool(done["inference"] >= 8 and done["preprocess"] >= done["inference"] + 8)

    client = redis.Redis.from_url(stack_settings.redis_url, decode_responses=True)
    key = f"{stack_settings.redis_prefix}:job:{job_id}"

    def redelivered() -> bool:
        return any(k.startswith("redeliveries:inference:chunk-") for k in client.hgetall(key))

    # A kill that lands between two chunks (the next one handed to the process but not yet
    # taken up) is no death mid-chunk: Celery gives that chunk to the new process as new.
    # Kill again, at most three times, until one lands on a chunk being inferred.
    for _ in range(3):
        wait_until(inferring, 120, "a chunk in inference after the first")
        stack.kill_pool(workers["inference"])
        try:
            wait_until(redelivered, 20, "the killed chunk to be redelivered")
            break
        except AssertionError:
            if get()["state"] != "running":
                break
    job = wait_for_job(lambda _: watch(), job_id, timeout=300)
    assert job["state"] == "succeeded", job["error"]
    record = client.hgetall(key)
    assert any(k.startswith("redeliveries:inference:chunk-") for k in record), record
    frames = json.loads(artifact(api_client, {"id": job_id}, "frames.json"))
    assert [f["index"] for f in frames] == list(range(len(truth)))
    outputs, _ = read_video(artifact(api_client, {"id": job_id}, "blurred.mp4"), tmp_path)
    assert len(outputs) == len(truth)
    partial = [p for p in seen if 0 < p["frames_done"] < p["frames_total"]]
    assert partial and any(p["eta_seconds"] is not None for p in partial), seen


def test_cancelling_a_video_mid_way_stops_its_chunks_and_removes_its_files(
    api_client: Any, assets: Path, stack_settings: Any, tmp_path: Path
) -> None:
    source = tmp_path / "cancel.mp4"
    sliding_face(source, face_crop(assets), seconds=6, fps=10, size=(1280, 720))
    response = submit(api_client, source.read_bytes(), {"pipeline": "blur-faces"}, name="c.mp4")
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    get = lambda: api_client.get(f"/v1/jobs/{job_id}").json()  # noqa: E731
    wait_until(
        lambda: (get()["progress"] or {}).get("frames_by_stage", {}).get("inference", 0) >= 8,
        120,
        "the first chunk through inference",
    )
    assert api_client.delete(f"/v1/jobs/{job_id}").status_code == 204
    storage = (
        stack_settings.resolve(stack_settings.storage_dir) / "tenants" / "acme" / "jobs" / job_id
    )

    # A later job through the same single workers proves the cancelled chunks are behind us.
    after = tmp_path / "after.mp4"
    moving_shapes(after, seconds=1, fps=10)
    assert run_video(api_client, after, {"pipeline": "blur-faces"})["state"] == "succeeded"
    job = get()
    assert job["state"] == "cancelled"
    assert job["progress"]["frames_done"] < job["progress"]["frames_total"] == 60
    assert not storage.exists(), sorted(p.name for p in storage.rglob("*"))
    assert api_client.get(f"/v1/jobs/{job_id}/result").status_code == 409
