"""Mask helpers: packing, RLE, the mapping back to original pixels (as Ultralytics), label maps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from celery_worker import masks
from celery_worker.imaging import letterbox
from tests.support.masks import decode_rle


def blobs(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((count, height, width), bool)
    for index in range(count):
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        axes = (int(rng.integers(5, width // 3)), int(rng.integers(5, height // 3)))
        layer = np.zeros((height, width), np.uint8)
        cv2.ellipse(layer, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        out[index] = layer.astype(bool)
    return out


def test_pack_round_trip() -> None:
    original = blobs(7, 37, 53)
    assert np.array_equal(masks.unpack(masks.pack(original)), original)
    empty = np.zeros((0, 384, 640), bool)
    assert masks.unpack(masks.pack(empty)).shape == (0, 384, 640)


@pytest.mark.parametrize("first", [False, True])
def test_rle_round_trip(first: bool) -> None:
    mask = blobs(1, 30, 40)[0]
    mask[0, 0] = first
    document = masks.rle(mask)
    assert document["size"] == [30, 40]
    assert sum(document["counts"]) == 30 * 40
    assert np.array_equal(decode_rle(document), mask)


@pytest.mark.parametrize("shape", [(720, 1280), (1080, 810), (333, 500)])
def test_masks_map_back_like_ultralytics(shape: tuple[int, int]) -> None:
    import torch
    from ultralytics.utils.ops import scale_masks

    height, width = shape
    _, box = letterbox(np.zeros((height, width, 3), np.uint8), 640)
    low = blobs(5, box["height"], box["width"], seed=3)
    expected = scale_masks(torch.from_numpy(low[None].astype(np.float32)), (height, width))[0]
    expected = expected.numpy() > 0.5
    for index in range(len(low)):
        got = masks.to_original(low[index], box, width, height)
        union = (got | expected[index]).sum()
        iou = (got & expected[index]).sum() / union if union else 1.0
        assert iou >= 0.99, (index, iou)


def test_label_map_encoding_and_tint() -> None:
    labels = masks.empty_label_map(2, 10, 10)
    assert labels.dtype == np.uint8 and not labels.any()
    assert masks.empty_label_map(300, 4, 4).dtype == np.uint16
    labels[3:5, 3:5] = 2
    decoded = cv2.imdecode(np.frombuffer(masks.encode_png(labels), np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(decoded, labels)
    image = np.full((10, 10, 3), 100, np.uint8)
    mask = labels > 0
    masks.tint(image, mask, (200, 0, 0), alpha=0.5)
    assert (image[mask] == [150, 50, 50]).all() and (image[~mask] == 100).all()
