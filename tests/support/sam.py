"""SAM-family weights for tests: random parameters, built offline, whose masks survive.

Ultralytics builds MobileSAM (and SAM 2 tiny) from nothing; with random parameters the
mask decoder's quality head scores every mask near 0, under ``SAM.predict``'s default
threshold (0.25), so it answers no mask at all. Raising that head's last bias (to 2:
scores about 1.9) keeps every mask, and leaves the masks themselves as the random network
draws them (about half of each picture, different per prompt): the service and a direct
``SAM(path).predict`` can then be compared mask against mask.
"""

from __future__ import annotations

from pathlib import Path


def build_scoring_sam(path: Path, seed: int = 0) -> Path:
    """Random weights saved at ``path`` (its name must end as Ultralytics names the
    architecture: ``mobile_sam.pt`` or ``sam2_t.pt``)."""
    import torch
    from ultralytics.models.sam.build import build_mobile_sam, build_sam2_t

    if path.is_file():
        return path
    build = build_sam2_t if path.name.endswith("sam2_t.pt") else build_mobile_sam
    torch.manual_seed(seed)
    model = build(None)
    head = model.mask_decoder if hasattr(model, "mask_decoder") else model.sam_mask_decoder
    with torch.no_grad():
        head.iou_prediction_head.layers[-1].bias.fill_(2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
