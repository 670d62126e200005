"""Image work with OpenCV: decode, letterbox, map boxes back, draw, blur, encode.

The letterbox is a re-implementation of Ultralytics' ``LetterBox`` (same sizes,
rounding, padding value and interpolation; a test checks it is bit-identical),
so that the CPU preprocess workers need not import torch.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np

from celery_worker.detections import Detections
from celery_worker.errors import InputError
from common.contract import Letterbox
from common.images import ImageRejected, inspect_image

PAD_VALUE = 114
# MTCNN's cost grows with the pixel count; larger pictures are searched at this size
# and the boxes scaled back, which still finds faces down to ~20 px in the original.
FACES_MAX_SIDE = 1600


def decode_image(path: Path, max_pixels: int) -> np.ndarray:
    """BGR uint8 image, EXIF orientation applied. Header checked before any decoding."""
    try:
        with path.open("rb") as stream:
            inspect_image(stream, max_pixels)
        data = np.fromfile(path, dtype=np.uint8)
    except ImageRejected as exc:
        raise InputError(str(exc)) from exc
    except FileNotFoundError as exc:
        raise InputError("the uploaded file is missing from storage") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise InputError("the image data is corrupt or truncated and could not be decoded")
    return image


def letterbox(
    image: np.ndarray, size: int, auto: bool = True, stride: int = 32
) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad to ``size`` (or the smallest stride multiple)."""
    height, width = image.shape[:2]
    ratio = min(size / height, size / width)
    new_w, new_h = max(round(width * ratio), 1), max(round(height * ratio), 1)
    dw, dh = size - new_w, size - new_h
    if auto:
        dw, dh = dw % stride, dh % stride
    top, bottom = round(dh / 2 - 0.1), round(dh / 2 + 0.1)
    left, right = round(dw / 2 - 0.1), round(dw / 2 + 0.1)
    if (width, height) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    image = cv2.copyMakeBorder(
        image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    box: Letterbox = {
        "scale": ratio,
        "pad_x": float(left),
        "pad_y": float(top),
        "width": image.shape[1],
        "height": image.shape[0],
    }
    return image, box


def unletterbox(boxes: np.ndarray, box: Letterbox, width: int, height: int) -> np.ndarray:
    """Map xyxy boxes from the model input back to original pixels, clipped to the image.

    Per-axis gains from the rounded resized size, as Ultralytics' ``scale_boxes`` does.
    """
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    gain = box["scale"]
    gain_x = max(round(width * gain), 1) / width
    gain_y = max(round(height * gain), 1) / height
    out[:, [0, 2]] = (out[:, [0, 2]] - box["pad_x"]) / gain_x
    out[:, [1, 3]] = (out[:, [1, 3]] - box["pad_y"]) / gain_y
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def safe_name(name: str) -> str:
    """A class name as a file-name fragment."""
    cleaned = "".join(c if c.isalnum() else "-" for c in name.encode("ascii", "ignore").decode())
    return cleaned.strip("-")[:40] or "object"


def widen(boxes: np.ndarray, margin: float, width: int, height: int) -> np.ndarray:
    """Each xyxy box grown by ``margin`` of its size on every side, clipped to the image."""
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    dx = (out[:, 2] - out[:, 0]) * margin
    dy = (out[:, 3] - out[:, 1]) * margin
    out[:, 0], out[:, 2] = (out[:, 0] - dx).clip(0, width), (out[:, 2] + dx).clip(0, width)
    out[:, 1], out[:, 3] = (out[:, 1] - dy).clip(0, height), (out[:, 3] + dy).clip(0, height)
    return out


def draw_detections(
    image: np.ndarray, detections: Detections, draw_labels: bool = True
) -> np.ndarray:
    """A copy of ``image`` with each box drawn (and its label, ASCII, with cv2's own font)."""
    canvas = image.copy()
    thickness = max(1, round(sum(canvas.shape[:2]) / 600))
    for box, name, label in zip(
        detections.xyxy, detections.class_name, detections.labels(), strict=True
    ):
        colour = colour_for(name)
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        if draw_labels:
            text = label.encode("ascii", "replace").decode()
            scale = thickness / 3
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            top = max(y1 - th - base - 2, 0)
            cv2.rectangle(canvas, (x1, top), (x1 + tw + 2, top + th + base + 2), colour, -1)
            cv2.putText(
                canvas,
                text,
                (x1 + 1, top + th + 1),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
    return canvas


def colour_for(class_name: str) -> tuple[int, int, int]:
    """One colour per class name, the same in every process (str hash is salted)."""
    palette = [
        (56, 56, 255),
        (151, 157, 255),
        (31, 112, 255),
        (29, 178, 255),
        (49, 210, 207),
        (10, 249, 72),
        (23, 204, 146),
        (134, 219, 61),
        (52, 147, 26),
        (187, 212, 0),
    ]
    return palette[zlib.crc32(class_name.encode()) % len(palette)]


def hide_regions(image: np.ndarray, boxes: np.ndarray, method: str, strength: int) -> np.ndarray:
    """A copy of ``image`` with each xyxy region blurred or pixelated; nothing else changes."""
    out = image.copy()
    height, width = out.shape[:2]
    for x1, y1, x2, y2 in np.asarray(boxes).reshape(-1, 4):
        left, top = max(int(np.floor(x1)), 0), max(int(np.floor(y1)), 0)
        right, bottom = min(int(np.ceil(x2)), width), min(int(np.ceil(y2)), height)
        if right - left < 2 or bottom - top < 2:
            continue
        region = out[top:bottom, left:right]
        out[top:bottom, left:right] = (
            _pixelate(region, strength) if method == "pixelate" else _gaussian(region, strength)
        )
    return out


def _gaussian(region: np.ndarray, strength: int) -> np.ndarray:
    # Kernel grows with the region, so a face is unreadable at any resolution.
    side = max(region.shape[:2])
    kernel = max(3, int(side * strength / 100) | 1)
    blurred = cv2.GaussianBlur(region, (kernel, kernel), 0)
    return cv2.GaussianBlur(blurred, (kernel, kernel), 0)


def _pixelate(region: np.ndarray, strength: int) -> np.ndarray:
    height, width = region.shape[:2]
    blocks = max(2, round(24 * (1 - strength / 100)) + 2)
    small_w = max(1, min(width, blocks))
    small_h = max(1, min(height, round(blocks * height / width)))
    small = cv2.resize(region, (small_w, small_h), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


def faces_input(image: np.ndarray) -> tuple[np.ndarray, float]:
    """What MTCNN is given for a BGR picture: RGB, at most ``FACES_MAX_SIDE``; and the scale."""
    height, width = image.shape[:2]
    scale = min(1.0, FACES_MAX_SIDE / max(height, width))
    if scale < 1.0:
        size = (round(width * scale), round(height * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), scale


def encode(image: np.ndarray, fmt: str) -> bytes:
    """JPEG (quality 92) or PNG bytes."""
    if fmt == "png":
        ok, data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    return bytes(data.tobytes())
