"""The ``inference`` queue (the GPU worker; CPU where there is none)."""

from __future__ import annotations

from typing import Any

import numpy as np

from celery_worker.adapters import from_mtcnn, from_ultralytics
from celery_worker.context import WorkerContext
from celery_worker.errors import InputError, ModelUnavailable
from celery_worker.framewise import yolo_arguments
from celery_worker.masks import pack
from celery_worker.models import LoadedModel
from celery_worker.steps import job_step
from common.contract import (
    TASK_INFER_DETECT,
    TASK_INFER_FACES,
    TASK_INFER_SEGMENT,
    Payload,
)


def _model_input(ctx: WorkerContext, payload: Payload) -> np.ndarray:
    try:
        array: np.ndarray = np.load(
            ctx.storage.path(payload["model_input_key"]), allow_pickle=False
        )
        return array
    except FileNotFoundError as exc:
        raise InputError("the preprocessed image is missing from storage") from exc


def _model(ctx: WorkerContext, payload: Payload, task: str) -> LoadedModel:
    loaded = ctx.models.get(payload["model_name"])
    if loaded.spec.task != task:
        raise ModelUnavailable(f"model {loaded.spec.name!r} is a {loaded.spec.task} model")
    return loaded


def _predict_yolo(ctx: WorkerContext, payload: Payload, task: str) -> tuple[Any, Any]:
    loaded = _model(ctx, payload, task)
    options = payload["options"]
    image = _model_input(ctx, payload)
    results = loaded.model.predict(image, **yolo_arguments(options, loaded.device))
    return loaded, results[0]


@job_step(TASK_INFER_DETECT, "inference")
def infer_detect(ctx: WorkerContext, payload: Payload) -> Payload:
    """YOLO on the letterboxed image; boxes stay in model-input pixels until postprocess."""
    loaded, result = _predict_yolo(ctx, payload, "detect")
    return {**payload, "raw": from_ultralytics(result), "model": loaded.info}


@job_step(TASK_INFER_SEGMENT, "inference")
def infer_segment(ctx: WorkerContext, payload: Payload) -> Payload:
    """YOLO-seg: boxes as for detect, masks (model-input size) to a bit-packed file."""
    loaded, result = _predict_yolo(ctx, payload, "segment")
    raw = from_ultralytics(result)
    height, width = _model_input_shape(payload)
    masks = (
        result.masks.data.cpu().numpy() > 0.5
        if result.masks is not None
        else np.zeros((0, height, width), bool)
    )
    key = ctx.storage.key(payload["job_id"], "work", "masks.npz")
    ctx.storage.write_bytes(key, pack(masks))
    return {**payload, "raw": raw, "masks_key": key, "model": loaded.info}


def _model_input_shape(payload: Payload) -> tuple[int, int]:
    return payload["letterbox"]["height"], payload["letterbox"]["width"]


@job_step(TASK_INFER_FACES, "inference")
def infer_faces(ctx: WorkerContext, payload: Payload) -> Payload:
    """MTCNN on the RGB image: every candidate face with its probability and landmarks."""
    loaded = _model(ctx, payload, "faces")
    image = _model_input(ctx, payload)
    boxes, probs, landmarks = loaded.model.detect(image, landmarks=True)
    return {**payload, "raw": from_mtcnn(boxes, probs, landmarks), "model": loaded.info}
