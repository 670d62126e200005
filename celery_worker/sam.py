"""Promptable segmentation with Ultralytics' SAM family: encode once, decode per prompt.

The image encoder is the expensive part (a ViT over a 1024x1024 letterboxed image); the
prompt encoder and mask decoder that turn points and boxes into masks are light. A
:class:`PromptableSegmenter` splits the two: :meth:`encode` returns an
:class:`Embedding` that can be serialized (float16, ``numpy`` arrays, no pickle) and kept,
and :meth:`decode` answers prompts from it, with the same preprocessing, prompt scaling
and mask post-processing as ``SAM(weights).predict(image, bboxes=..., points=...)``.

SAM and MobileSAM embed an image as one tensor (256x64x64); SAM 2 as a dict of that tensor
and two higher-resolution feature maps, which its decoder also uses. Ultralytics picks
the builder from the weights' file name (``mobile_sam.pt``, ``sam_b.pt``, ``sam2_t.pt``,
``sam2.1_l.pt``, ...), so a file must keep such a name.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from celery_worker.detections import Detections
from common.contract import Letterbox
from common.prompts import Prompt

# Ultralytics' defaults for SAM (its SAM.predict overrides): the model's input side and
# the score a mask needs to be kept.
INPUT_SIZE = 1024
MIN_SCORE = 0.25
# Prompts answered in one decoder pass at most (detect-sam may bring hundreds of boxes),
# and the float32 bytes a pass may hold while it scales its masks to full size (each at
# 1024 x 1024 and at the picture's size): big pictures get smaller passes.
PASS_PROMPTS = 32
PASS_BYTES = 512 * 1024**2
# Outlines of fewer corners than this are not simplified (it would remove next to nothing).
SIMPLIFY_FROM = 8
_HIGH_RES = "high_res_feats"
OBJECT = "object"  # the class name of a mask a prompt asked for


@dataclass
class Embedding:
    """One image's encoder output and the size of the image it came from."""

    features: Any  # torch.Tensor (SAM), or {"image_embed": Tensor, "high_res_feats": [...]}
    height: int
    width: int

    def to_bytes(self, dtype: Any = np.float16) -> bytes:
        """The arrays in ``.npz`` form (uncompressed: float noise does not compress)."""
        arrays = {"size": np.array([self.height, self.width], dtype=np.int64)}
        if isinstance(self.features, dict):
            arrays["image_embed"] = _array(self.features["image_embed"], dtype)
            for n, level in enumerate(self.features[_HIGH_RES]):
                arrays[f"{_HIGH_RES}_{n}"] = _array(level, dtype)
        else:
            arrays["features"] = _array(self.features, dtype)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, device: Any = "cpu") -> Embedding:
        """The embedding :meth:`to_bytes` wrote, as float32 tensors on ``device``."""
        import torch

        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            height, width = (int(v) for v in arrays["size"])

            def tensor(name: str) -> Any:
                return torch.from_numpy(arrays[name].astype(np.float32)).to(device)

            if "features" in arrays.files:
                return cls(tensor("features"), height, width)
            levels = sorted(
                (k for k in arrays.files if k.startswith(_HIGH_RES)),
                key=lambda k: int(k.rsplit("_", 1)[1]),
            )
            features = {
                "image_embed": tensor("image_embed"),
                _HIGH_RES: [tensor(k) for k in levels],
            }
            return cls(features, height, width)


@dataclass
class Mask:
    """One answer to a prompt: the mask in the original image's pixels, its score, and the
    decoder's low-resolution logits (what a later prompt may pass back to refine it)."""

    mask: np.ndarray  # bool, height x width
    score: float
    logits: np.ndarray  # float32, 256 x 256 (SAM's mask input size)
    index: int = 0  # the object (row of the prompts) it answers


class PromptableSegmenter:
    """One SAM-family model, loaded once (``weights``: a ``.pt`` whose name Ultralytics
    recognises) on ``device`` ("cpu", "cuda:0", ...)."""

    def __init__(self, weights: Path, device: str = "cpu") -> None:
        from ultralytics import SAM

        self.weights = Path(weights)
        self.sam = SAM(str(self.weights))
        overrides = {
            "conf": MIN_SCORE,
            "task": "segment",
            "mode": "predict",
            "imgsz": INPUT_SIZE,
            "retina_masks": True,
            "save": False,
            "verbose": False,
            "device": device,
        }
        self.predictor = self.sam._smart_load("predictor")(
            overrides=overrides, _callbacks=self.sam.callbacks
        )
        self.predictor.setup_model(model=self.sam.model, verbose=False)
        self.is_sam2 = self.sam.is_sam2

    def encode(self, image: np.ndarray) -> Embedding:
        """The image encoder's output for a BGR ``image`` (as OpenCV reads it)."""
        import torch

        with torch.inference_mode():
            self.predictor.set_image(image)
            features = self.predictor.features
            self.predictor.reset_image()
        return Embedding(features, int(image.shape[0]), int(image.shape[1]))

    def decode(
        self,
        embedding: Embedding,
        boxes: list[list[float]] | None = None,
        points: list[list[list[float]]] | None = None,
        labels: list[list[int]] | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool = False,
        min_score: float = MIN_SCORE,
    ) -> list[Mask]:
        """Masks for prompts in original pixels: ``boxes`` (N x [x1, y1, x2, y2]) and/or
        ``points`` (N x P x [x, y]) with ``labels`` (N x P; 1 in the object, 0 outside), one
        object per row (rows of boxes and points go together), answered in one decoder pass;
        ``mask_input``: low-resolution logits of a previous answer (N x 256 x 256), as
        SAM's decoder takes them (``SAM.predict`` would letterbox them to 1024 first).
        Up to three masks per object with ``multimask``; those scoring under ``min_score``
        are dropped, as ``SAM.predict`` drops them."""
        import torch
        from ultralytics.utils import ops

        predictor = self.predictor
        source = (embedding.height, embedding.width)
        with torch.inference_mode():
            prompts = predictor._prepare_prompts(
                (INPUT_SIZE, INPUT_SIZE), source, boxes, points, labels
            )
            if mask_input is not None:
                low = torch.as_tensor(np.asarray(mask_input, np.float32), device=predictor.device)
                # The masks come last (SAM 2 turns boxes into points: one value fewer).
                prompts = (*prompts[:-1], low.to(predictor.torch_dtype)[:, None])
            logits, scores = predictor._inference_features(embedding.features, *prompts, multimask)
            keep = scores > min_score
            objects = torch.nonzero(keep).flatten() // (3 if multimask else 1)
            # As Ultralytics' Predictor.postprocess: undo the letterbox (top-left, no pad).
            gain = min(INPUT_SIZE / source[0], INPUT_SIZE / source[1])
            ratio_y, ratio_x = (
                round(o * gain) * m / INPUT_SIZE / o
                for o, m in zip(source, logits.shape[1:], strict=True)
            )
            kept = logits[keep]
            if kept.shape[0] == 0:
                return []
            undo = ((ratio_y, ratio_x), (0.0, 0.0))
            full = ops.scale_masks(kept[None].float(), source, undo, padding=False)[0]
            masks = (full > self.sam.model.mask_threshold).cpu().numpy()
        low = kept.float().cpu().numpy()
        kept_scores = scores[keep].float().cpu().numpy()
        rows = objects.cpu().tolist()
        return [
            Mask(masks[n], float(kept_scores[n]), low[n], int(rows[n]))
            for n in range(masks.shape[0])
        ]

    def answer(
        self,
        embedding: Embedding,
        prompts: Sequence[Prompt],
        mask_inputs: dict[str, np.ndarray] | None = None,
        multimask: bool = False,
        min_score: float = MIN_SCORE,
    ) -> list[Mask]:
        """Masks for ``prompts`` (``common.prompts``), ``Mask.index`` naming the prompt.

        Prompts of one shape (all boxes, all points, ...) share one decoder pass (of at
        most ``PASS_PROMPTS``, fewer on big pictures: ``PASS_BYTES``); points are padded
        to the longest with SAM's "not a point" label (-1). ``mask_inputs``: the logits
        each prompt's ``mask_input`` names.
        """
        groups: dict[tuple[bool, bool, bool], list[int]] = {}
        for index, prompt in enumerate(prompts):
            groups.setdefault(prompt.shape, []).append(index)
        per_prompt = 4 * (INPUT_SIZE**2 + embedding.height * embedding.width)
        per_prompt *= 3 if multimask else 1
        size = max(1, min(PASS_PROMPTS, PASS_BYTES // per_prompt))
        passes = [
            (shape, members[first : first + size])
            for shape, members in groups.items()
            for first in range(0, len(members), size)
        ]
        out: list[Mask] = []
        for (has_box, has_points, has_mask), members in passes:
            chosen = [prompts[i] for i in members]
            boxes = [list(p.box) for p in chosen if p.box is not None] if has_box else None
            points = labels = None
            if has_points:
                longest = max(len(p.points) for p in chosen)
                points = [
                    [list(xy) for xy in p.points] + [[0.0, 0.0]] * (longest - len(p.points))
                    for p in chosen
                ]
                labels = [list(p.labels) + [-1] * (longest - len(p.labels)) for p in chosen]
            masks_in = None
            if has_mask:
                masks_in = np.stack([(mask_inputs or {})[str(p.mask_input)] for p in chosen])
            for mask in self.decode(
                embedding, boxes, points, labels, masks_in, multimask, min_score
            ):
                mask.index = members[mask.index]
                out.append(mask)
        out.sort(key=lambda m: m.index)  # stable: a prompt's multimask answers stay in order
        return out


def _array(tensor: Any, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy().astype(dtype))


# Answers as the service's other models give theirs ----------------------------------
def identity(width: int, height: int) -> Letterbox:
    """The "letterbox" of a picture kept as it is (the SAM family letterboxes itself)."""
    return {"scale": 1.0, "pad_x": 0.0, "pad_y": 0.0, "width": width, "height": height}


def mask_outlines(mask: np.ndarray, tolerance: float = 0.0) -> list[list[list[float]]]:
    """A full-size mask's outer outlines in its pixels (OpenCV's contours, as the segment
    pipeline's), simplified to within ``tolerance`` pixels (Douglas-Peucker; 0: every
    corner kept); specks that make no polygon (fewer than three points) left out."""
    import cv2

    found = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    # Short contours (specks: most of a noisy mask's) keep their corners; one list for all
    # points, cut per contour, instead of a conversion each: noisy masks have thousands.
    contours = [
        cv2.approxPolyDP(c, tolerance, True) if tolerance > 0 and len(c) > SIMPLIFY_FROM else c
        for c in found[0]
    ]
    contours = [c for c in contours if len(c) >= 3]
    if not contours:
        return []
    points = np.concatenate(contours).reshape(-1, 2).astype(np.float64).tolist()
    ends = np.cumsum([len(c) for c in contours]).tolist()
    return [points[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]


def bounds(mask: np.ndarray) -> list[float]:
    """x1, y1, x2, y2 of a mask's pixels (as Ultralytics' boxes of SAM masks); zeros if none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def mask_detections(
    masks: Sequence[Mask],
    width: int,
    height: int,
    found: Detections | None = None,
    outlines: bool = True,
) -> Detections:
    """Masks as ``Detections``: of the prompts (``class_id`` the prompt's row, the mask's
    score as confidence), or of ``found`` (the detector's class, confidence and box, row by
    row); with outlines and areas unless ``outlines`` is False (an image's postprocess step
    draws them from the masks themselves)."""
    if found is None:
        found = Detections(
            xyxy=np.array([bounds(m.mask) for m in masks], np.float64).reshape(-1, 4),
            confidence=np.array([m.score for m in masks], np.float64),
            class_id=np.array([m.index for m in masks], np.int64),
            class_name=(OBJECT,) * len(masks),
        )
    if not outlines:
        return found
    shapes = tuple(mask_outlines(m.mask) for m in masks)
    return found.with_columns(polygons=shapes, area=tuple(int(m.mask.sum()) for m in masks))
