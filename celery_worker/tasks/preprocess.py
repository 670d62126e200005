"""The ``preprocess`` queue (CPU): decode, validate, orient, convert, resize."""

from __future__ import annotations

import io

import cv2
import numpy as np

from celery_worker.context import WorkerContext
from celery_worker.errors import ModelUnavailable
from celery_worker.imaging import decode_image, letterbox
from celery_worker.models import rectangular_input
from celery_worker.steps import job_step
from common.contract import TASK_PREPROCESS_IMAGE, Letterbox, Payload

# MTCNN's cost grows with the pixel count; larger photos are searched at this size
# and the boxes scaled back, which still finds faces down to ~20 px in the original.
FACES_MAX_SIDE = 1600
MODEL_INPUT = "model-input.npy"


@job_step(TASK_PREPROCESS_IMAGE, "preprocess")
def preprocess_image(ctx: WorkerContext, payload: Payload) -> Payload:
    """Decode the upload (EXIF orientation applied) and write the model's input array.

    detect: BGR, letterboxed to ``image_size`` exactly as Ultralytics does it.
    faces: RGB, downscaled to at most ``FACES_MAX_SIDE``.
    The original size and the transform travel on, to map results back.
    """
    job_id = payload["job_id"]
    image = decode_image(ctx.storage.path(payload["input_key"]), ctx.settings.max_image_pixels)
    height, width = image.shape[:2]
    spec = ctx.models.specs.get(payload["model_name"])
    if spec is None:
        raise ModelUnavailable(f"no model named {payload['model_name']!r} on this worker")
    if spec.task == "faces":
        model_input, box = _for_faces(image)
    else:
        auto = rectangular_input(spec.weights)
        model_input, box = letterbox(image, int(payload["options"]["image_size"]), auto=auto)
    key = ctx.storage.key(job_id, "work", MODEL_INPUT)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(model_input))
    ctx.storage.write_bytes(key, buffer.getvalue())
    return {
        **payload,
        "image": {"width": width, "height": height},
        "model_input_key": key,
        "letterbox": box,
    }


def _for_faces(image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
    height, width = image.shape[:2]
    scale = min(1.0, FACES_MAX_SIDE / max(height, width))
    if scale < 1.0:
        image = cv2.resize(
            image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA
        )
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    box: Letterbox = {
        "scale": scale,
        "pad_x": 0.0,
        "pad_y": 0.0,
        "width": rgb.shape[1],
        "height": rgb.shape[0],
    }
    return rgb, box
