"""Reading back what the service writes about masks (the service itself never decodes RLE)."""

from __future__ import annotations

from typing import Any

import numpy as np


def decode_rle(document: dict[str, Any]) -> np.ndarray:
    """COCO uncompressed RLE (column-major, zeros first) -> a bool mask."""
    height, width = document["size"]
    values = np.zeros(height * width, dtype=bool)
    position, value = 0, False
    for count in document["counts"]:
        values[position : position + count] = value
        position += count
        value = not value
    return values.reshape((height, width), order="F")
