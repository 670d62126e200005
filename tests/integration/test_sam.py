"""Promptable segmentation through the real stack: images, prompts, the embedding cache,
and the sam / detect-sam pipelines, against a direct Ultralytics ``SAM(path).predict``.

The stack's mobile-sam has random weights whose quality head is raised so that masks
survive SAM's score threshold (``tests.support.sam``): the masks are the random
network's, about half of each picture and different per prompt, and are compared with
Ultralytics' own as masks (IoU), not as logits.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.support.api import assert_problem, run_job
from tests.support.jobs import wait_for_job, wait_until
from tests.support.masks import decode_rle

pytestmark = [pytest.mark.broker, pytest.mark.workers]

BOXES = [[100.0, 50.0, 600.0, 700.0], [700.0, 40.0, 1200.0, 700.0]]  # zidane.jpg, 1280x720


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def fresh_jpeg(assets: Path, name: str = "zidane.jpg") -> tuple[bytes, np.ndarray]:
    """A picture no other test uploaded (its embedding is not cached): the photo with a
    random patch; and the picture as decoded."""
    image = cv2.imread(str(assets / name))
    rng = np.random.default_rng()
    y, x = int(rng.integers(0, 50)), int(rng.integers(0, 50))
    image[y : y + 8, x : x + 8] = rng.integers(0, 255, (8, 8, 3))
    ok, data = cv2.imencode(".png", image)  # lossless: the service decodes the same pixels
    assert ok
    return data.tobytes(), image


def upload(client: Any, data: bytes, **fields: str) -> Any:
    return client.post("/v1/images", files={"file": ("photo.png", data, "image/png")}, data=fields)


def ready(client: Any, image_id: str, model: str = "mobile-sam") -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        shown = client.get(f"/v1/images/{image_id}").json()
        state = shown["embeddings"].get(model, {})
        assert state.get("state") != "failed", state
        return shown if state.get("state") == "ready" else None

    return wait_until(check, 60, "the embedding")


def direct_masks(weights: Path, image: np.ndarray, **prompts: Any) -> np.ndarray:
    from ultralytics import SAM

    result = SAM(str(weights)).predict(image, verbose=False, device="cpu", **prompts)[0]
    assert result.masks is not None
    masks: np.ndarray = result.masks.data.numpy().astype(bool)
    return masks


@pytest.fixture(scope="module")
def embedded(api_client: Any, assets: Path) -> tuple[str, np.ndarray]:
    """An image uploaded and embedded once for the tests that only prompt it."""
    data, image = fresh_jpeg(assets)
    response = upload(api_client, data)
    assert response.status_code == 201, response.text
    return ready(api_client, response.json()["id"])["id"], image


def segment(client: Any, image_id: str, **body: Any) -> Any:
    return client.post(f"/v1/images/{image_id}/segment", json=body)


def test_boxes_are_answered_in_one_request_as_ultralytics_answers_them(
    api_client: Any, embedded: tuple[str, np.ndarray], sam_weights: Path
) -> None:
    image_id, image = embedded
    prompts = [{"box": box} for box in BOXES]
    response = segment(api_client, image_id, prompts=prompts, rle=True)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["pipeline"] == "sam-prompt" and answer["image_id"] == image_id
    assert [m["prompt"] for m in answer["masks"]] == [0, 1]
    expected = direct_masks(sam_weights, image, bboxes=BOXES)
    assert len(expected) == 2
    for mask, want in zip(answer["masks"], expected, strict=True):
        got = decode_rle(mask["rle"])
        assert got.shape == image.shape[:2]
        assert 0.05 < got.mean() < 0.95  # a real mask, neither empty nor everything
        assert iou(got, want) >= 0.99, iou(got, want)
        assert mask["area"] == int(got.sum())
        ys, xs = np.nonzero(got)
        assert mask["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert mask["polygons"] and all(len(p) >= 3 for p in mask["polygons"])
    # The two boxes are different objects: different masks.
    assert iou(decode_rle(answer["masks"][0]["rle"]), decode_rle(answer["masks"][1]["rle"])) < 0.9
    assert answer["model"]["embedding"]["source"] in ("memory", "cache")


def test_points_with_a_negative_label_and_refinement(
    api_client: Any, embedded: tuple[str, np.ndarray], sam_weights: Path
) -> None:
    image_id, image = embedded
    prompt = {"points": [[900, 300], [300, 400]], "labels": [1, 0]}
    first = segment(api_client, image_id, prompts=[prompt], rle=True)
    assert first.status_code == 200, first.text
    (mask,) = first.json()["masks"]
    expected = direct_masks(sam_weights, image, points=[[[900, 300], [300, 400]]], labels=[[1, 0]])
    assert iou(decode_rle(mask["rle"]), expected[0]) >= 0.99

    refined = segment(
        api_client, image_id, prompts=[{**prompt, "mask_input": mask["id"]}], rle=True
    )
    assert refined.status_code == 200, refined.text
    (again,) = refined.json()["masks"]
    assert again["id"] != mask["id"]
    assert not np.array_equal(decode_rle(again["rle"]), decode_rle(mask["rle"]))

    multi = segment(api_client, image_id, prompts=[prompt], multimask=True, min_score=-100)
    assert [m["prompt"] for m in multi.json()["masks"]] == [0, 0, 0]


def test_mixed_prompts_are_answered_in_prompt_order(
    api_client: Any, embedded: tuple[str, np.ndarray]
) -> None:
    image_id, _ = embedded
    prompts = [{"points": [[200, 200]]}, {"box": BOXES[0]}, {"points": [[900, 300], [950, 320]]}]
    response = segment(api_client, image_id, prompts=prompts)
    assert response.status_code == 200, response.text
    assert [m["prompt"] for m in response.json()["masks"]] == [0, 1, 2]


def test_the_same_image_again_is_the_same_image_and_embedding(
    api_client: Any, assets: Path, client_as: Any
) -> None:
    data, _ = fresh_jpeg(assets)
    first = upload(api_client, data)
    assert first.status_code == 201, first.text
    assert first.headers["location"] == f"/v1/images/{first.json()['id']}"
    shown = ready(api_client, first.json()["id"])
    state = shown["embeddings"]["mobile-sam"]
    assert state["source"] == "encoder" and state["bytes"] > 2_000_000

    again = upload(api_client, data)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.json()["embeddings"]["mobile-sam"]["state"] == "ready"  # not queued again

    # Another tenant's upload of the same file is another image, and cannot see this one.
    other = upload(client_as("globex"), data)
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert_problem(client_as("globex").get(first.headers["location"]), 404, "no image")


def test_a_prompt_before_the_embedding_is_ready_is_a_job_to_follow(
    api_client: Any, assets: Path
) -> None:
    data, _ = fresh_jpeg(assets)
    image_id = upload(api_client, data).json()["id"]
    response = segment(api_client, image_id, prompts=[{"box": BOXES[1]}])
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["pipeline"] == "sam-prompt" and response.headers["location"] == job["links"]["self"]
    done = wait_for_job(lambda j: api_client.get(f"/v1/jobs/{j}").json(), job["id"], 60)
    assert done["state"] == "succeeded", done["error"]
    result = api_client.get(f"/v1/jobs/{job['id']}/result").json()
    assert result["image_id"] == image_id and len(result["masks"]) == 1
    # The job encoded the image; the image says so, and the next prompt is answered at once.
    assert ready(api_client, image_id)["embeddings"]["mobile-sam"]["state"] == "ready"
    started = time.monotonic()
    assert segment(api_client, image_id, prompts=[{"box": BOXES[0]}]).status_code == 200
    assert time.monotonic() - started < 30

    # wait 0: always a job, even with the embedding ready.
    assert segment(api_client, image_id, prompts=[{"box": BOXES[0]}], wait=0).status_code == 202


def test_bad_prompts_are_refused_with_reasons(
    api_client: Any, embedded: tuple[str, np.ndarray]
) -> None:
    image_id, _ = embedded
    url = f"/v1/images/{image_id}/segment"
    outside = {"prompts": [{"box": [0, 0, 2000, 100]}]}
    assert_problem(api_client.post(url, json=outside), 400, "outside the image (1280 x 720)")
    inverted = {"prompts": [{"box": [300, 300, 100, 100]}]}
    assert_problem(api_client.post(url, json=inverted), 400, "x2 > x1")
    labels = {"prompts": [{"points": [[10, 10], [20, 20]], "labels": [1]}]}
    assert_problem(api_client.post(url, json=labels), 400, "one label per point")
    assert_problem(api_client.post(url, json={"prompts": [{}]}), 400, "give a box, points")
    unknown = {"prompts": [{"box": BOXES[0], "mask_input": "0" * 32}]}
    assert_problem(api_client.post(url, json=unknown), 400, "not a mask answered on this image")
    detector = {"prompts": [{"box": BOXES[0]}], "model": "yolov8n"}
    assert_problem(api_client.post(url, json=detector), 400, "not a SAM model")
    absent = {"prompts": [{"box": BOXES[0]}], "model": "sam-h"}
    assert_problem(api_client.post(url, json=absent), 409, "no weights file")
    assert_problem(api_client.post(f"/v1/images/{'a' * 32}/segment", json=outside), 404, "no image")


def test_delete_removes_the_image_its_masks_and_embedding(
    api_client: Any, assets: Path, stack_dir: Path, stack_store: Any
) -> None:
    data, _ = fresh_jpeg(assets)
    image_id = upload(api_client, data).json()["id"]
    ready(api_client, image_id)
    assert segment(api_client, image_id, prompts=[{"box": BOXES[0]}]).status_code == 200
    storage = stack_dir / "storage" / "tenants" / "acme"
    assert (storage / "images" / image_id / "masks").is_dir()
    embeddings = len(list((storage / "embeddings").glob("*.npz")))
    used = api_client.get("/v1/usage").json()

    assert api_client.delete(f"/v1/images/{image_id}").status_code == 204
    assert not (storage / "images" / image_id).exists()
    assert len(list((storage / "embeddings").glob("*.npz"))) == embeddings - 1
    assert_problem(api_client.get(f"/v1/images/{image_id}"), 404, "no image")
    assert_problem(api_client.delete(f"/v1/images/{image_id}"), 404, "no image")
    after = api_client.get("/v1/usage").json()
    assert after["usage"]["bytes"] == used["usage"]["bytes"] - len(data)
    assert after["embedding_bytes"] == used["embedding_bytes"] - 2_097_678  # MobileSAM's
    # Uploaded again: a new image, encoded again (the worker's memory does not answer for
    # an embedding the cache no longer has).
    assert upload(api_client, data).status_code == 201
    assert ready(api_client, image_id)["embeddings"]["mobile-sam"]["source"] == "encoder"


def test_uploads_are_checked_like_job_uploads(api_client: Any) -> None:
    garbage = {"file": ("x.jpg", b"not an image", "image/jpeg")}
    assert_problem(api_client.post("/v1/images", files=garbage), 415, "not an image")
    other = {"picture": ("x.jpg", b"x", "image/jpeg")}
    assert_problem(api_client.post("/v1/images", files=other), 400, "")
    huge = {"file": ("x.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (3 * 1024 * 1024), "image/png")}
    assert_problem(api_client.post("/v1/images", files=huge), 413, "limit")


def test_the_sam_pipeline_answers_boxes_as_ultralytics(
    api_client: Any, assets: Path, sam_weights: Path
) -> None:
    import json

    job = run_job(
        api_client,
        assets / "zidane.jpg",
        {"pipeline": "sam", "boxes": json.dumps(BOXES), "rle": True},
    )
    assert job["state"] == "succeeded", job["error"]
    result = api_client.get(f"/v1/jobs/{job['id']}/result").json()
    image = cv2.imread(str(assets / "zidane.jpg"))
    expected = direct_masks(sam_weights, image, bboxes=BOXES)
    detections = result["detections"]
    assert [d["class_id"] for d in detections] == [0, 1]
    assert {d["class_name"] for d in detections} == {"object"}
    for detection, want in zip(detections, expected, strict=True):
        assert iou(decode_rle(detection["rle"]), want) >= 0.99
    names = {a["name"] for a in result["artifacts"]}
    assert {"overlay.jpg", "labels.png"} <= names

    bad = api_client.post(
        "/v1/jobs",
        files={"file": ("z.jpg", (assets / "zidane.jpg").read_bytes(), "image/jpeg")},
        data={"pipeline": "sam", "boxes": "[[1, 2, 3]]"},
    )
    assert_problem(bad, 400, "a box is [x1, y1, x2, y2]")
    none = api_client.post(
        "/v1/jobs",
        files={"file": ("z.jpg", (assets / "zidane.jpg").read_bytes(), "image/jpeg")},
        data={"pipeline": "sam"},
    )
    assert_problem(none, 400, "needs the option boxes or points")


def test_detect_sam_gives_one_mask_per_detection(
    api_client: Any, assets: Path, sam_weights: Path, yolo_weights: Path
) -> None:
    from ultralytics import YOLO

    fields = {"pipeline": "detect-sam", "rle": True, "max_detections": 5}
    job = run_job(api_client, assets / "bus.jpg", fields)
    assert job["state"] == "succeeded", job["error"]
    result = api_client.get(f"/v1/jobs/{job['id']}/result").json()
    image = cv2.imread(str(assets / "bus.jpg"))
    boxes = YOLO(str(yolo_weights)).predict(image, verbose=False, device="cpu", max_det=5)[0].boxes
    assert len(boxes) == 5
    detections = result["detections"]
    assert len(detections) == len(boxes)
    np.testing.assert_allclose([d["box"] for d in detections], boxes.xyxy.numpy(), atol=0.01)
    assert [d["class_id"] for d in detections] == boxes.cls.int().tolist()
    expected = direct_masks(sam_weights, image, bboxes=boxes.xyxy.numpy())
    for detection, want in zip(detections, expected, strict=True):
        assert iou(decode_rle(detection["rle"]), want) >= 0.99
    assert result["model"]["embedding"]["detector"]["name"] == "yolov8n"


def test_the_decoder_runs_on_the_cpu_workers_when_configured(
    stack_settings: Any, workers: Any, keys: Any, assets: Path
) -> None:
    """CV_SAM_DECODER_QUEUE=postprocess: the encoder stays on the inference queue (first
    in the chain when the embedding is missing), the decoder runs on a CPU worker."""
    from dataclasses import replace

    from api.app import create_app
    from tests.support.keys import headers

    app = create_app(replace(stack_settings, sam_decoder_queue="postprocess"))
    client = app.test_client(base_url="http://localhost")
    client.headers.update(headers(keys.acme))
    data, _ = fresh_jpeg(assets)
    image_id = upload(client, data).json()["id"]
    queued = segment(client, image_id, prompts=[{"box": BOXES[0]}])
    assert queued.status_code == 202, queued.text  # the embedding was only queued
    job = wait_for_job(lambda j: client.get(f"/v1/jobs/{j}").json(), queued.json()["id"], 90)
    assert job["state"] == "succeeded", job["error"]
    assert [(s["name"], s["queue"]) for s in job["steps"]] == [("inference", "postprocess")]
    answered = segment(client, image_id, prompts=[{"box": BOXES[1]}])
    assert answered.status_code == 200, answered.text
    assert answered.json()["model"]["embedding"]["source"] in ("cache", "memory")


@pytest.mark.parametrize("pipeline", ["sam", "detect-sam"])
def test_sam_pipelines_run_on_video(api_client: Any, tmp_path: Path, pipeline: str) -> None:
    import json

    from tests.integration.test_video import artifact, read_video, run_video
    from tests.support.videos import moving_shapes

    source = tmp_path / "shapes.webm"
    moving_shapes(source, seconds=0.4, fps=10)  # 4 frames of 320 x 240
    fields: dict[str, Any] = {"pipeline": pipeline, "max_side": 160}
    if pipeline == "sam":
        fields["boxes"] = json.dumps([[20, 20, 300, 220]])  # source pixels: halved with it
    else:
        fields["max_detections"] = 3
    job = run_video(api_client, source, fields)
    assert job["state"] == "succeeded", job["error"]
    frames = json.loads(artifact(api_client, job, "frames.json"))
    assert len(frames) == 4
    for frame in frames:
        detections = frame["detections"]
        if pipeline == "sam":
            assert len(detections) == 1 and detections[0]["class_name"] == "object"
        else:
            assert 1 <= len(detections) <= 3
        for detection in detections:
            assert detection["area"] > 0 and detection["polygons"]
            for polygon in detection["polygons"]:
                points = np.asarray(polygon)
                assert (points >= 0).all() and (points <= [160, 120]).all()
    outputs, _ = read_video(artifact(api_client, job, "overlay.mp4"), tmp_path)
    assert len(outputs) == 4 and outputs[0].shape == (120, 160, 3)


def test_an_image_that_cannot_be_decoded_fails_its_embedding_with_a_reason(
    api_client: Any, assets: Path
) -> None:
    """The header is fine (accepted), the pixels are not: the embedding fails with the
    reason, shown on the image; a prompt on it becomes a job that fails with it too."""
    whole = (assets / "zidane.jpg").read_bytes()
    rng = np.random.default_rng()
    cut = whole[:2000] + bytes(rng.integers(0, 255, 64, dtype=np.uint8))  # header, then noise
    response = api_client.post("/v1/images", files={"file": ("cut.jpg", cut, "image/jpeg")})
    assert response.status_code == 201, response.text
    image_id = response.json()["id"]

    def failed() -> dict[str, Any] | None:
        state = api_client.get(f"/v1/images/{image_id}").json()["embeddings"]["mobile-sam"]
        return state if state["state"] == "failed" else None

    # Embeddings ahead of it in the queue take seconds each on a loaded 2-core CI host.
    state = wait_until(failed, 180, "the embedding to fail")
    assert state["error"]["kind"] == "input" and state["error"]["detail"]
    queued = segment(api_client, image_id, prompts=[{"box": BOXES[0]}])
    assert queued.status_code == 202, queued.text
    job = wait_for_job(lambda j: api_client.get(f"/v1/jobs/{j}").json(), queued.json()["id"], 60)
    assert job["state"] == "failed" and job["error"]["kind"] == "input", job
