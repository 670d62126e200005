"""Image work: the letterbox equals Ultralytics', boxes map back as Ultralytics maps them,
and hiding a region changes nothing outside it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from celery_worker.errors import InputError
from celery_worker.imaging import decode_image, encode, hide_regions, letterbox, unletterbox, widen

SHAPES = [(720, 1280), (1080, 810), (480, 640), (333, 500), (50, 900), (640, 640)]


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [320, 640])
@pytest.mark.parametrize("auto", [True, False])
def test_letterbox_is_bit_identical_to_ultralytics(
    shape: tuple[int, int], size: int, auto: bool
) -> None:
    from ultralytics.data.augment import LetterBox

    image = noise(*shape)
    expected = LetterBox(size, auto=auto, stride=32)(image=image)
    got, box = letterbox(image, size, auto=auto)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)
    assert (box["width"], box["height"]) == (got.shape[1], got.shape[0])


@pytest.mark.parametrize("shape", SHAPES)
def test_boxes_map_back_like_ultralytics_scale_boxes(shape: tuple[int, int]) -> None:
    import torch
    from ultralytics.utils.ops import scale_boxes

    image = noise(*shape)
    model_input, box = letterbox(image, 640)
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, [box["width"], box["height"]], (20, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 200, (20, 2))], axis=1)
    expected = scale_boxes(model_input.shape[:2], torch.tensor(boxes), image.shape[:2]).numpy()
    got = unletterbox(boxes, box, image.shape[1], image.shape[0])
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("method", ["gaussian", "pixelate"])
def test_hiding_changes_the_regions_and_nothing_else(method: str) -> None:
    image = noise(200, 300)
    boxes = np.array([[10.4, 20.6, 90.2, 120.0], [150, 50, 260, 190]])
    hidden = hide_regions(image, boxes, method, 60)
    inside = np.zeros(image.shape[:2], bool)
    inside[20:120, 10:91] = True
    inside[50:190, 150:260] = True
    assert np.array_equal(hidden[~inside], image[~inside])
    for x1, y1, x2, y2 in [(11, 21, 90, 119), (150, 50, 260, 190)]:
        region_before = image[y1:y2, x1:x2].astype(float)
        region_after = hidden[y1:y2, x1:x2].astype(float)
        assert np.abs(region_after - region_before).mean() > 30  # noise is gone
        assert region_after.std() < region_before.std() / 2


def test_stronger_blur_hides_more() -> None:
    image = noise(100, 100)
    box = np.array([[0, 0, 100, 100]])
    light = hide_regions(image, box, "gaussian", 5).std()
    heavy = hide_regions(image, box, "gaussian", 95).std()
    assert heavy < light


def test_widen_grows_and_clips() -> None:
    grown = widen(np.array([[10.0, 10.0, 30.0, 50.0]]), 0.5, 40, 55)
    np.testing.assert_allclose(grown, [[0, 0, 40, 55]])
    np.testing.assert_allclose(
        widen(np.array([[10.0, 10.0, 30.0, 30.0]]), 0.1, 100, 100), [[8, 8, 32, 32]]
    )


def test_decode_applies_the_pixel_limit_and_reports_corrupt_data(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(encode(noise(40, 30), "png"))
    assert decode_image(good, 10_000).shape == (40, 30, 3)
    with pytest.raises(InputError, match="limit is 1000"):
        decode_image(good, 1000)
    truncated = tmp_path / "truncated.jpg"
    data = encode(noise(400, 300), "jpeg")
    truncated.write_bytes(data[: len(data) // 2])  # header intact, so the API accepted it
    with pytest.raises(InputError, match="corrupt or truncated"):
        decode_image(truncated, 10_000_000)
    with pytest.raises(InputError, match="missing"):
        decode_image(tmp_path / "nope.jpg", 10_000)


def test_decode_applies_exif_orientation(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(noise(40, 100)).save(path, "JPEG", exif=exif)
    assert decode_image(path, 10_000).shape[:2] == (100, 40)
    assert cv2.imread(str(path)).shape[:2] == (100, 40)
