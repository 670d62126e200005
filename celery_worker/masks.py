"""Instance masks: from the model's input resolution back to the original image.

The mapping follows Ultralytics (``ops.scale_masks`` for pixels, ``scale_coords``
for outlines), so the service's masks match a direct ``YOLO(...).predict()``.
Masks travel between steps as a bit-packed ``.npz`` file in storage.
"""

from __future__ import annotations

import io
from typing import Any

import cv2
import numpy as np

from common.contract import Letterbox


def pack(masks: np.ndarray) -> bytes:
    """(N, H, W) bool -> compressed npz bytes (8 pixels a byte)."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, bits=np.packbits(masks.astype(bool), axis=-1), shape=np.array(masks.shape)
    )
    return buffer.getvalue()


def unpack(data: bytes) -> np.ndarray:
    with np.load(io.BytesIO(data)) as archive:
        shape = tuple(int(v) for v in archive["shape"])
        return np.unpackbits(archive["bits"], axis=-1, count=shape[-1]).astype(bool).reshape(shape)


def _crop(box: Letterbox, width: int, height: int) -> tuple[int, int, int, int]:
    """Rows and columns of the letterboxed input that hold the image (as scale_masks)."""
    gain = box["scale"]
    pad_w = (box["width"] - max(round(width * gain), 1)) / 2
    pad_h = (box["height"] - max(round(height * gain), 1)) / 2
    top, left = round(pad_h - 0.1), round(pad_w - 0.1)
    bottom, right = box["height"] - round(pad_h + 0.1), box["width"] - round(pad_w + 0.1)
    return top, bottom, left, right


def to_original(mask: np.ndarray, box: Letterbox, width: int, height: int) -> np.ndarray:
    """One model-input mask -> a bool mask of the original image (bilinear, threshold 0.5)."""
    top, bottom, left, right = _crop(box, width, height)
    cropped = mask[top:bottom, left:right].astype(np.float32)
    resized = cv2.resize(cropped, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized > 0.5


def polygons(mask: np.ndarray, box: Letterbox, width: int, height: int) -> list[list[list[float]]]:
    """Outer contours of a model-input mask, in original pixels (as Ultralytics' masks.xy)."""
    contours = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[
        0
    ]
    gain = box["scale"]
    gain_x = max(round(width * gain), 1) / width
    gain_y = max(round(height * gain), 1) / height
    out = []
    for contour in contours:
        points = contour.reshape(-1, 2).astype(np.float64)
        points[:, 0] = ((points[:, 0] - box["pad_x"]) / gain_x).clip(0, width)
        points[:, 1] = ((points[:, 1] - box["pad_y"]) / gain_y).clip(0, height)
        out.append([[round(float(x), 2), round(float(y), 2)] for x, y in points])
    return out


def rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE: run lengths in column-major order, starting with zeros."""
    flat = mask.astype(np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def empty_label_map(count: int, height: int, width: int) -> np.ndarray:
    """Zeros, 8-bit for up to 255 instances, else 16-bit."""
    return np.zeros((height, width), dtype=np.uint8 if count < 256 else np.uint16)


def encode_png(labels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", labels)
    if not ok:
        raise RuntimeError("OpenCV could not encode the label map")
    return bytes(data.tobytes())


def tint(
    image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float = 0.45
) -> None:
    """Blend ``colour`` into the masked pixels of ``image``, in place."""
    pixels = image[mask].astype(np.float32)
    image[mask] = (pixels * (1 - alpha) + np.array(colour, np.float32) * alpha).astype(np.uint8)
