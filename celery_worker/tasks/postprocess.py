"""The ``postprocess`` queue (CPU): map back, draw or blur, encode, write the result."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np

from celery_worker import masks
from celery_worker.app import app, context
from celery_worker.context import WorkerContext
from celery_worker.errors import JobGone
from celery_worker.imaging import (
    colour_for,
    decode_image,
    draw_detections,
    encode,
    hide_regions,
    safe_name,
    unletterbox,
    widen,
)
from celery_worker.janitor import purge_expired
from celery_worker.steps import job_step
from common.contract import (
    QUEUE_POSTPROCESS,
    TASK_JANITOR,
    TASK_POSTPROCESS_BLUR,
    TASK_POSTPROCESS_CROPS,
    TASK_POSTPROCESS_DETECT,
    TASK_POSTPROCESS_REDACT,
    TASK_POSTPROCESS_SEGMENT,
    Payload,
    artifact_content_type,
    artifact_href,
)

log = logging.getLogger(__name__)
JANITOR_EVERY_SECONDS = 600


def _yolo_detections(payload: Payload) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """YOLO boxes mapped to original pixels, as result entries (in model order)."""
    raw = payload["raw"]
    names = payload["model"].get("names", {})
    width, height = payload["image"]["width"], payload["image"]["height"]
    boxes = unletterbox(np.asarray(raw["boxes"]), payload["letterbox"], width, height)
    detections = [
        {
            "box": [round(float(v), 3) for v in box],
            "confidence": round(float(score), 6),
            "class_id": int(cls),
            "class_name": str(names.get(str(cls), names.get(cls, str(cls)))),
        }
        for box, score, cls in zip(boxes, raw["scores"], raw["classes"], strict=True)
    ]
    return boxes, detections


def _labels(detections: list[dict[str, Any]]) -> list[str]:
    return [f"{d['class_name']} {d['confidence']:.2f}" for d in detections]


@job_step(TASK_POSTPROCESS_DETECT, "postprocess", final=True)
def postprocess_detect(ctx: WorkerContext, payload: Payload) -> Payload:
    """Boxes to original pixels, the annotated image, the result document."""
    started = time.perf_counter()
    options = payload["options"]
    boxes, detections = _yolo_detections(payload)
    image = decode_image(ctx.storage.path(payload["input_key"]), ctx.settings.max_image_pixels)
    annotated = draw_detections(image, boxes, _labels(detections), bool(options["draw_labels"]))
    artifact = _write_artifact(ctx, payload, "annotated", annotated, options["output_format"])
    return _finish(ctx, payload, detections, [artifact], started)


@job_step(TASK_POSTPROCESS_SEGMENT, "postprocess", final=True)
def postprocess_segment(ctx: WorkerContext, payload: Payload) -> Payload:
    """Masks to original pixels: outlines (and RLE), an overlay and a label map."""
    started = time.perf_counter()
    options = payload["options"]
    width, height = payload["image"]["width"], payload["image"]["height"]
    box = payload["letterbox"]
    boxes, detections = _yolo_detections(payload)
    low_res = masks.unpack(ctx.storage.path(payload["masks_key"]).read_bytes())
    if len(low_res) != len(detections):
        raise RuntimeError(f"{len(low_res)} masks for {len(detections)} boxes")
    image = decode_image(ctx.storage.path(payload["input_key"]), ctx.settings.max_image_pixels)
    # One full-size mask at a time (memory: detections x pixels would not fit), painted
    # into the overlay and the label map; the most confident instance wins overlaps.
    labels = masks.empty_label_map(len(detections), height, width)
    for index, (detection, mask) in enumerate(zip(detections, low_res, strict=True)):
        detection["polygons"] = masks.polygons(mask, box, width, height)
        original = masks.to_original(mask, box, width, height)
        detection["area"] = int(original.sum())
        if options["rle"]:
            detection["rle"] = masks.rle(original)
        masks.tint(image, original, colour_for(detection["class_name"]))
        labels[original & (labels == 0)] = index + 1
    annotated = draw_detections(image, boxes, _labels(detections), bool(options["draw_labels"]))
    overlay = _write_artifact(ctx, payload, "overlay", annotated, options["output_format"])
    labels_png = _store(ctx, payload, "labels.png", masks.encode_png(labels))
    return _finish(ctx, payload, detections, [overlay, labels_png], started)


@job_step(TASK_POSTPROCESS_CROPS, "postprocess", final=True)
def postprocess_crops(ctx: WorkerContext, payload: Payload) -> Payload:
    """Each detection cropped (widened by ``margin``) into its own image, plus crops.json."""
    started = time.perf_counter()
    options = payload["options"]
    width, height = payload["image"]["width"], payload["image"]["height"]
    boxes, detections = _yolo_detections(payload)
    image = decode_image(ctx.storage.path(payload["input_key"]), ctx.settings.max_image_pixels)
    artifacts, manifest = [], []
    for index, (detection, box) in enumerate(
        zip(detections, widen(boxes, float(options["margin"]), width, height), strict=True)
    ):
        x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
        x2, y2 = int(np.ceil(box[2])), int(np.ceil(box[3]))
        if x2 - x1 < 1 or y2 - y1 < 1:
            continue
        stem = f"crop-{index + 1:04d}-{safe_name(detection['class_name'])}"
        artifact = _write_artifact(
            ctx, payload, stem, image[y1:y2, x1:x2], options["output_format"]
        )
        artifacts.append(artifact)
        detection["crop"] = artifact["name"]
        manifest.append({"file": artifact["name"], "crop_box": [x1, y1, x2, y2], **detection})
    document = {"job_id": payload["job_id"], "crops": manifest}
    listing = _store(ctx, payload, "crops.json", json.dumps(document, indent=1).encode())
    return _finish(ctx, payload, detections, [listing, *artifacts], started)


@job_step(TASK_POSTPROCESS_REDACT, "postprocess", final=True)
def postprocess_redact(ctx: WorkerContext, payload: Payload) -> Payload:
    """Every detection (of the chosen classes) blurred or pixelated in the original image."""
    started = time.perf_counter()
    boxes, detections = _yolo_detections(payload)
    artifact = _hide(ctx, payload, boxes, "redacted")
    return _finish(ctx, payload, detections, [artifact], started)


@job_step(TASK_POSTPROCESS_BLUR, "postprocess", final=True)
def postprocess_blur(ctx: WorkerContext, payload: Payload) -> Payload:
    """Faces over the threshold, widened by the margin, hidden in the original image."""
    started = time.perf_counter()
    options, raw = payload["options"], payload["raw"]
    width, height = payload["image"]["width"], payload["image"]["height"]
    scale = payload["letterbox"]["scale"]
    keep = [i for i, p in enumerate(raw["scores"]) if p >= float(options["min_confidence"])]
    boxes = np.asarray([raw["boxes"][i] for i in keep], dtype=float).reshape(-1, 4) / scale
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    landmarks = [np.asarray(raw["landmarks"][i], dtype=float) / scale for i in keep]
    detections = [
        {
            "box": [round(float(v), 3) for v in box],
            "confidence": round(float(raw["scores"][i]), 6),
            "class_id": 0,
            "class_name": "face",
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in marks],
        }
        for box, i, marks in zip(boxes, keep, landmarks, strict=True)
    ]
    artifact = _hide(ctx, payload, boxes, "blurred")
    return _finish(ctx, payload, detections, [artifact], started)


def _hide(ctx: WorkerContext, payload: Payload, boxes: np.ndarray, stem: str) -> dict[str, Any]:
    """The original image with ``boxes`` (widened by ``margin``) hidden, as an artifact."""
    options = payload["options"]
    width, height = payload["image"]["width"], payload["image"]["height"]
    image = decode_image(ctx.storage.path(payload["input_key"]), ctx.settings.max_image_pixels)
    hidden = hide_regions(
        image,
        widen(boxes, float(options["margin"]), width, height),
        str(options["blur_method"]),
        int(options["blur_strength"]),
    )
    return _write_artifact(ctx, payload, stem, hidden, options["output_format"])


def _write_artifact(
    ctx: WorkerContext, payload: Payload, stem: str, image: np.ndarray, fmt: str
) -> dict[str, Any]:
    name = f"{stem}.{'png' if fmt == 'png' else 'jpg'}"
    return _store(ctx, payload, name, encode(image, fmt))


def _store(ctx: WorkerContext, payload: Payload, name: str, data: bytes) -> dict[str, Any]:
    ctx.storage.write_bytes(ctx.storage.key(payload["job_id"], "artifacts", name), data)
    return {"name": name, "content_type": artifact_content_type(name), "bytes": len(data)}


def _finish(
    ctx: WorkerContext,
    payload: Payload,
    detections: list[dict[str, Any]],
    artifacts: list[dict[str, Any]],
    started: float,
) -> Payload:
    job_id = payload["job_id"]
    timings = {**payload.get("timings", {}), "postprocess": round(time.perf_counter() - started, 4)}
    model = {k: v for k, v in payload["model"].items() if k != "names"}
    result = {
        "job_id": job_id,
        "pipeline": payload["pipeline"],
        "image": payload["image"],
        "model": model,
        "options": payload["options"],
        "detections": detections,
        "artifacts": [{**a, "href": artifact_href(job_id, a["name"])} for a in artifacts],
        "timings": timings,
    }
    if not ctx.store.succeed(job_id, "postprocess", result, artifacts):
        raise JobGone(job_id)
    if ctx.store.claim_janitor_run(JANITOR_EVERY_SECONDS):
        app.send_task(TASK_JANITOR, queue=QUEUE_POSTPROCESS)
    return {"job_id": job_id, "pipeline": payload["pipeline"], "timings": timings}


@app.task(name=TASK_JANITOR, ignore_result=True)
def janitor() -> int:
    """Remove expired jobs' files and index entries (sent at most every ten minutes)."""
    purged = purge_expired(context.store, context.storage)
    if purged:
        log.info("janitor removed %d expired jobs", purged)
    return purged
