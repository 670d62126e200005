"""``Detections``: what a model found in one image or video frame, in that picture's pixels.

The one result type of the workers. Every model adapter returns it
(``celery_worker.adapters``); every renderer (``render``), the tracker
(``video.tracking``) and every result writer takes it. Between steps and in the
result documents it travels as ``to_json()``: a list of plain dicts, rounded once,
here::

    {"box": [x1, y1, x2, y2], "confidence": 0.91, "class_id": 0, "class_name": "person",
     "landmarks": [[x, y] * 5],          # faces
     "polygons": [[[x, y], ...], ...], "area": 1234,   # segment models
     "track_id": 3}                     # videos, after tracking

A frozen dataclass of our own rather than ``supervision.Detections``: the service needs
five fields and JSON, not supervision's annotators and trackers (their drawing and
ids differ from what the parity tests and clients rely on), and it would bring
matplotlib and a second OpenCV wheel into the workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

Polygons = list[list[list[float]]]  # per detection: outlines, each a list of [x, y]

# Decimal places of what leaves a worker: boxes within 1/1000 px of the model's own
# output, scores within 1e-6.
BOX_DECIMALS = 3
SCORE_DECIMALS = 6
POINT_DECIMALS = 2


@dataclass(frozen=True, eq=False)
class Detections:
    """One row per detection, in the model's order. Optional columns are None when the
    model does not give them (``landmarks``: faces; ``polygons``, ``area``: segment models;
    ``track_id``: tracked videos)."""

    xyxy: NDArray[np.float64]  # (n, 4) x1, y1, x2, y2 in pixels of the picture
    confidence: NDArray[np.float64]  # (n,)
    class_id: NDArray[np.int64]  # (n,)
    class_name: tuple[str, ...]
    landmarks: NDArray[np.float64] | None = None  # (n, 5, 2)
    polygons: tuple[Polygons, ...] | None = None
    area: tuple[int, ...] | None = None
    track_id: tuple[int | None, ...] | None = None

    def __post_init__(self) -> None:
        count = len(self.class_name)
        object.__setattr__(self, "xyxy", np.asarray(self.xyxy, np.float64).reshape(count, 4))
        object.__setattr__(self, "confidence", np.asarray(self.confidence, np.float64))
        object.__setattr__(self, "class_id", np.asarray(self.class_id, np.int64))
        if self.landmarks is not None:
            landmarks = np.asarray(self.landmarks, np.float64)
            landmarks = landmarks.reshape(count, -1, 2) if count else np.zeros((0, 5, 2))
            object.__setattr__(self, "landmarks", landmarks)
        columns = (self.confidence, self.class_id, self.landmarks, self.polygons, self.area)
        lengths = {len(c) for c in (*columns, self.track_id) if c is not None}
        if lengths - {count}:
            raise ValueError(f"columns of {sorted(lengths)} rows for {count} detections")

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), ())

    def __len__(self) -> int:
        return len(self.class_name)

    def labels(self) -> list[str]:
        """``"<class> <score>"`` per detection, as drawn beside its box."""
        return [f"{n} {c:.2f}" for n, c in zip(self.class_name, self.confidence, strict=True)]

    def with_columns(self, **columns: Any) -> Detections:
        """A copy with columns set (``polygons``, ``area``, ``track_id``, ...)."""
        return replace(self, **columns)

    def to_json(self) -> list[dict[str, Any]]:
        """Plain dicts, one per detection, rounded (the only place that rounds)."""
        items: list[dict[str, Any]] = []
        for row in range(len(self)):
            item: dict[str, Any] = {
                "box": [round(float(v), BOX_DECIMALS) for v in self.xyxy[row]],
                "confidence": round(float(self.confidence[row]), SCORE_DECIMALS),
                "class_id": int(self.class_id[row]),
                "class_name": self.class_name[row],
            }
            if self.landmarks is not None:
                item["landmarks"] = _points(self.landmarks[row])
            if self.polygons is not None:
                item["polygons"] = [_points(np.asarray(p)) for p in self.polygons[row]]
            if self.area is not None:
                item["area"] = int(self.area[row])
            if self.track_id is not None:
                item["track_id"] = self.track_id[row]
            items.append(item)
        return items

    @classmethod
    def from_json(cls, items: Sequence[dict[str, Any]]) -> Detections:
        """The inverse of ``to_json``; keys a writer added (``rle``, ``crop``) are ignored."""
        if not items:
            return cls.empty()

        def column(name: str) -> tuple[Any, ...] | None:
            return tuple(i.get(name) for i in items) if name in items[0] else None

        landmarks = column("landmarks")
        return cls(
            xyxy=np.asarray([i["box"] for i in items], np.float64),
            confidence=np.asarray([i["confidence"] for i in items], np.float64),
            class_id=np.asarray([i["class_id"] for i in items], np.int64),
            class_name=tuple(str(i["class_name"]) for i in items),
            landmarks=np.asarray(landmarks, np.float64) if landmarks is not None else None,
            polygons=column("polygons"),
            area=column("area"),
            track_id=column("track_id"),
        )


def _points(points: NDArray[np.float64]) -> list[list[float]]:
    return [[round(float(x), POINT_DECIMALS), round(float(y), POINT_DECIMALS)] for x, y in points]
