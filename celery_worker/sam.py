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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Ultralytics' defaults for SAM (its SAM.predict overrides): the model's input side and
# the score a mask needs to be kept.
INPUT_SIZE = 1024
MIN_SCORE = 0.25
_HIGH_RES = "high_res_feats"


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
        ``mask_input``: low-resolution logits of a previous answer (N x 256 x 256).
        Up to three masks per object with ``multimask``; those scoring under ``min_score``
        are dropped, as ``SAM.predict`` drops them."""
        import torch
        from ultralytics.utils import ops

        predictor = self.predictor
        source = (embedding.height, embedding.width)
        with torch.inference_mode():
            prompts = predictor._prepare_prompts(
                (INPUT_SIZE, INPUT_SIZE), source, boxes, points, labels, mask_input
            )
            logits, scores = predictor._inference_features(embedding.features, *prompts, multimask)
            keep = scores > min_score
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
        return [Mask(masks[n], float(kept_scores[n]), low[n]) for n in range(masks.shape[0])]


def _array(tensor: Any, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy().astype(dtype))
