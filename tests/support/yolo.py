"""A real YOLO architecture whose random weights actually fire.

Ultralytics' random initialisation shrinks activations to ~1e-7 by the head, so
every score is the same tiny constant whatever the image (PLATFORM.md). Here
the BatchNorm statistics are calibrated on the given images (one forward pass
in train mode with momentum 1), which restores unit-scale, image-dependent
features; the class-head bias is then raised so that boxes pass conf 0.25
(76 on zidane.jpg, 300 on bus.jpg). The file is a genuine Ultralytics .pt
checkpoint: the service and a direct ``YOLO(path)`` call load the same thing.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def build_firing_yolo(
    path: Path, images: list[Path], arch: str = "yolov8n.yaml", bias: float = -1.3
) -> Path:
    import torch  # Ultralytics was configured offline by tests/conftest.py
    from ultralytics import YOLO
    from ultralytics.data.augment import LetterBox

    torch.manual_seed(0)
    model = YOLO(arch)
    net = model.model
    batch = torch.stack(
        [
            torch.from_numpy(
                np.ascontiguousarray(LetterBox(640)(image=cv2.imread(str(p)))[..., ::-1])
            )
            .permute(2, 0, 1)
            .float()
            / 255
            for p in images
        ]
    )
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
    net.train()
    with torch.no_grad():
        net(batch)
    net.eval()
    generator = torch.Generator().manual_seed(0)
    for head in net.model[-1].cv3:
        with torch.no_grad():
            head[-1].weight.copy_(torch.randn(head[-1].weight.shape, generator=generator) * 0.01)
            head[-1].bias.fill_(bias)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    return path
