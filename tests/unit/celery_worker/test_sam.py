"""The SAM-family segmenter against Ultralytics' own ``SAM(weights).predict``.

Weights are built offline with random parameters (Ultralytics' builders, no download).
MobileSAM's random masks score below the default threshold, so ``predict`` returns none:
for it the decoder's raw logits are compared, captured from ``predict`` with a forward
hook. SAM 2 tiny's masks are not empty: for it the masks themselves are compared (IoU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from celery_worker.sam import Embedding, PromptableSegmenter
from celery_worker.samples import ultralytics_assets

BOXES = [[100.0, 50.0, 600.0, 700.0], [700.0, 40.0, 1200.0, 700.0]]
POINTS = [[[900.0, 300.0], [300.0, 400.0]]]
LABELS = [[1, 0]]


def random_weights(folder: Path, name: str) -> Path:
    import torch
    from ultralytics.models.sam.build import build_mobile_sam, build_sam2_t

    build = {"mobile_sam.pt": build_mobile_sam, "sam2_t.pt": build_sam2_t}[name]
    torch.manual_seed(0)
    path = folder / f"random-{name}"  # Ultralytics picks the builder by this ending
    torch.save(build(None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    image = cv2.imread(str(ultralytics_assets() / "zidane.jpg"))
    assert image is not None
    return image


@pytest.fixture(scope="module", params=["mobile_sam.pt", "sam2_t.pt"])
def weights(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_weights(tmp_path_factory.mktemp("sam"), request.param)


@pytest.fixture(scope="module")
def encoded(weights: Path, photo: np.ndarray) -> tuple[PromptableSegmenter, Any]:
    """The segmenter and the photo's embedding (the encoder is the slow part: once)."""
    segmenter = PromptableSegmenter(weights)
    return segmenter, segmenter.encode(photo)


def direct(weights: Path, image: np.ndarray, **prompts: Any) -> tuple[Any, np.ndarray]:
    """``SAM(weights).predict`` and the raw logits its mask decoder produced."""
    from ultralytics import SAM

    model = SAM(str(weights))
    inner = model.model
    decoder = inner.sam_mask_decoder if model.is_sam2 else inner.mask_decoder
    captured: list[Any] = []
    hook = decoder.register_forward_hook(lambda m, i, out: captured.append(out[0].detach()))
    try:
        results = model.predict(image, verbose=False, **prompts)
    finally:
        hook.remove()
    assert len(captured) == 1
    return results[0], captured[0].flatten(0, 1).float().numpy()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.mark.parametrize(
    "prompts",
    [{"bboxes": BOXES}, {"points": POINTS, "labels": LABELS}],
    ids=["two boxes", "a positive and a negative point"],
)
def test_the_segmenter_answers_as_ultralytics_predict(
    weights: Path, photo: np.ndarray, encoded: Any, prompts: dict[str, Any]
) -> None:
    result, reference = direct(weights, photo, **prompts)
    segmenter, embedding = encoded
    kept = Embedding.from_bytes(embedding.to_bytes())  # float16, as cached
    every = segmenter.decode(
        kept,
        boxes=prompts.get("bboxes"),
        points=prompts.get("points"),
        labels=prompts.get("labels"),
        min_score=-np.inf,
    )
    logits = np.stack([m.logits for m in every])
    assert logits.shape == reference.shape
    # float16 embeddings: the logits move by far less than their own scale.
    assert np.abs(logits - reference).max() < 1e-3 * max(1.0, float(np.abs(reference).max()))

    answered = segmenter.decode(
        kept,
        boxes=prompts.get("bboxes"),
        points=prompts.get("points"),
        labels=prompts.get("labels"),
    )
    theirs = [] if result.masks is None else list(result.masks.data.numpy())
    assert len(answered) == len(theirs)
    for ours, mask in zip(answered, theirs, strict=True):
        assert ours.mask.shape == photo.shape[:2]
        assert iou(ours.mask, mask) >= 0.99
    if "sam2" in weights.name:  # its random masks are not empty: the IoU above meant something
        assert theirs and all(m.sum() > 1000 for m in theirs)


def test_float32_embeddings_give_the_same_logits_exactly(encoded: Any) -> None:
    segmenter, embedding = encoded
    again = Embedding.from_bytes(embedding.to_bytes(np.float32))
    first = segmenter.decode(embedding, boxes=BOXES, min_score=-np.inf)
    second = segmenter.decode(again, boxes=BOXES, min_score=-np.inf)
    assert [m.score for m in first] == [m.score for m in second]
    assert all(np.array_equal(a.logits, b.logits) for a, b in zip(first, second, strict=True))


def test_an_embedding_is_float16_and_knows_its_image(
    weights: Path, photo: np.ndarray, encoded: Any
) -> None:
    data = encoded[1].to_bytes()
    # SAM: 256x64x64; SAM 2 adds 32x256x256 and 64x128x128 feature maps (2 bytes each).
    values = 256 * 64 * 64 + (32 * 256 * 256 + 64 * 128 * 128 if "sam2" in weights.name else 0)
    assert 2 * values < len(data) < 2 * values + 4096
    back = Embedding.from_bytes(data)
    assert (back.height, back.width) == photo.shape[:2]


def test_multimask_gives_three_masks_per_object(encoded: Any) -> None:
    segmenter, embedding = encoded
    masks = segmenter.decode(
        embedding, points=POINTS, labels=LABELS, multimask=True, min_score=-np.inf
    )
    assert len(masks) == 3 and all(m.logits.shape == (256, 256) for m in masks)


def test_a_previous_answer_refines_the_next(encoded: Any) -> None:
    """The logits of one answer go back in as the mask input: the decoder uses them (the
    answer changes) and still answers one mask per object."""
    segmenter, embedding = encoded
    first = segmenter.decode(embedding, points=POINTS, labels=LABELS, min_score=-np.inf)
    refined = segmenter.decode(
        embedding,
        points=POINTS,
        labels=LABELS,
        mask_input=np.stack([m.logits for m in first]),
        min_score=-np.inf,
    )
    assert len(refined) == len(first) == 1
    assert not np.array_equal(refined[0].logits, first[0].logits)


def test_the_registry_loads_a_sam_model_and_explains_a_bad_name(
    weights: Path, tmp_path: Path
) -> None:
    from celery_worker.errors import ModelUnavailable
    from celery_worker.models import ModelRegistry, ModelSpec, load_sam

    good = ModelSpec("some-sam", "sam", load_sam, weights)
    loaded = ModelRegistry({"some-sam": good}, "cpu").get("some-sam")
    assert isinstance(loaded.model, PromptableSegmenter)
    assert loaded.info["family"] == ("sam2" if "sam2" in weights.name else "sam")
    assert loaded.info["weights_bytes"] == weights.stat().st_size

    renamed = tmp_path / "weights.pt"  # Ultralytics cannot tell which builder it needs
    renamed.write_bytes(weights.read_bytes())
    bad = ModelSpec("bad-sam", "sam", load_sam, renamed)
    with pytest.raises(ModelUnavailable, match="the file name must end"):
        ModelRegistry({"bad-sam": bad}, "cpu").get("bad-sam")
