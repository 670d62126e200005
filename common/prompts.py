"""Prompts of the SAM family: boxes and points in, checked, on their way to the decoder.

Stdlib only (the API checks them; the workers answer them, ``celery_worker.sam``). One
prompt asks for one object: a box, points (each labelled 1: in the object, 0: not), or
both, and optionally the low-resolution logits of an earlier answer to refine
(``mask_input``, an earlier mask's id). Coordinates are pixels of the original picture.

Two ways in, one form out (a list of :class:`Prompt`):

- ``POST /v1/images/{id}/segment``: ``prompts`` as objects (:func:`parse_request`);
- a ``sam`` job's options, shaped as Ultralytics' ``SAM.predict`` arguments
  (:func:`from_options`): ``boxes`` ``[[x1, y1, x2, y2], ...]`` (one object each),
  ``points`` ``[[x, y], ...]`` (one object each) or ``[[[x, y], ...], ...]`` (several
  points per object), ``labels`` shaped as ``points`` without the coordinates (default
  all 1); with boxes and points both, row n of each belongs to object n.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_PROMPTS = 64
MAX_POINTS = 32
# Full-size mask pixels one answer may hold (bool: bytes): masks x width x height. 2 GB
# is about 2,000 masks of a 1280 x 720 picture, or 50 of a 40-megapixel one.
MAX_MASK_PIXELS = 2_000_000_000


class PromptError(ValueError):
    """A prompt that cannot be answered; the message says what to change."""


@dataclass(frozen=True)
class Prompt:
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    mask_input: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.box is not None:
            out["box"] = list(self.box)
        if self.points:
            out["points"] = [list(p) for p in self.points]
            out["labels"] = list(self.labels)
        if self.mask_input:
            out["mask_input"] = self.mask_input
        return out

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Prompt:
        box = item.get("box")
        return cls(
            tuple(float(v) for v in box) if box is not None else None,  # type: ignore[arg-type]
            tuple((float(x), float(y)) for x, y in item.get("points") or ()),
            tuple(int(v) for v in item.get("labels") or ()),
            item.get("mask_input"),
        )

    @property
    def shape(self) -> tuple[bool, bool, bool]:
        """What the decoder gets (box, points, mask input): prompts alike share a pass."""
        return self.box is not None, bool(self.points), self.mask_input is not None

    def scaled(self, sx: float, sy: float) -> Prompt:
        """The same prompt on a picture resized by ``sx``, ``sy`` (a downscaled video)."""
        box = None
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            box = (x1 * sx, y1 * sy, x2 * sx, y2 * sy)
        points = tuple((x * sx, y * sy) for x, y in self.points)
        return Prompt(box, points, self.labels, self.mask_input)


def parse_request(items: Sequence[dict[str, Any]]) -> list[Prompt]:
    """The ``prompts`` of a segment request (their JSON shape the spec has checked)."""
    if not items:
        raise PromptError("give at least one prompt (a box, points, or both)")
    if len(items) > MAX_PROMPTS:
        raise PromptError(f"{len(items)} prompts; at most {MAX_PROMPTS} in one request")
    prompts = []
    for index, item in enumerate(items):
        where = f"prompt {index}"
        box = _box(item.get("box"), where) if item.get("box") is not None else None
        points, labels = _points(item.get("points") or [], item.get("labels"), where)
        if box is None and not points:
            raise PromptError(f"{where}: give a box, points, or both")
        prompts.append(Prompt(box, points, labels, item.get("mask_input") or None))
    return prompts


def from_options(boxes: str | None, points: str | None, labels: str | None) -> list[Prompt]:
    """The prompts of a ``sam`` job's options (JSON text, as Ultralytics' arguments)."""
    box_rows = _json(boxes, "boxes")
    point_rows = _json(points, "points")
    label_rows = _json(labels, "labels")
    if box_rows is None and point_rows is None:
        raise PromptError("a sam job needs the option boxes or points (or both)")
    if label_rows is not None and point_rows is None:
        raise PromptError("option labels goes with option points")
    boxes_out = []
    if box_rows is not None:
        boxes_out = [_box(row, f"boxes[{n}]") for n, row in enumerate(_rows(box_rows, "boxes"))]
    points_out: list[tuple[tuple[tuple[float, float], ...], tuple[int, ...]]] = []
    if point_rows is not None:
        rows = _rows(point_rows, "points")
        # [[x, y], ...]: one point per object (as SAM.predict reads a 2-D list).
        nested = all(isinstance(r, list) and r and isinstance(r[0], list) for r in rows)
        per_object = rows if nested else [[r] for r in rows]
        if label_rows is None:
            labels_per = [[1] * len(r) for r in per_object]
        else:
            lrows = _rows(label_rows, "labels")
            labels_per = lrows if nested else [[v] for v in lrows]
            if len(labels_per) != len(per_object):
                raise PromptError("option labels needs one label per point, shaped as points")
        for n, (pts, lbs) in enumerate(zip(per_object, labels_per, strict=True)):
            if not isinstance(lbs, list):
                raise PromptError(f"labels[{n}]: a list of labels, shaped as points[{n}]")
            points_out.append(_points(pts, lbs, f"points[{n}]"))
    if boxes_out and points_out and len(boxes_out) != len(points_out):
        raise PromptError(
            f"{len(boxes_out)} boxes and {len(points_out)} point rows: with both, row n of "
            "each belongs to object n"
        )
    count = max(len(boxes_out), len(points_out))
    if count > MAX_PROMPTS:
        raise PromptError(f"{count} objects; at most {MAX_PROMPTS} in one job")
    return [
        Prompt(
            boxes_out[n] if boxes_out else None,
            points_out[n][0] if points_out else (),
            points_out[n][1] if points_out else (),
        )
        for n in range(count)
    ]


def check_inside(prompts: Sequence[Prompt], width: int, height: int) -> None:
    """Refuse coordinates outside a ``width`` x ``height`` picture."""
    for index, prompt in enumerate(prompts):
        corners = list(prompt.points)
        if prompt.box is not None:
            corners += [prompt.box[:2], prompt.box[2:]]
        for x, y in corners:
            if not (0 <= x <= width and 0 <= y <= height):
                raise PromptError(
                    f"prompt {index}: ({x:g}, {y:g}) lies outside the image ({width} x {height})"
                )


def check_masks(count: int, width: int, height: int) -> None:
    """Refuse answers of ``count`` full-size masks that would not fit ``MAX_MASK_PIXELS``."""
    if count * width * height > MAX_MASK_PIXELS:
        most = max(1, MAX_MASK_PIXELS // (width * height))
        raise PromptError(
            f"{count} masks of a {width} x {height} picture are too many for one answer; "
            f"at most {most} (fewer prompts, no multimask, or fewer detections)"
        )


def _json(text: str | None, name: str) -> Any:
    if text is None or str(text).strip() == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise PromptError(f"option {name} must be JSON, e.g. {_EXAMPLES[name]}") from None


_EXAMPLES = {
    "boxes": "[[10, 20, 200, 300]]",
    "points": "[[120, 80]] or [[[120, 80], [300, 90]]]",
    "labels": "[1] or [[1, 0]]",
}


def _rows(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise PromptError(f"option {name} must be a non-empty JSON list, e.g. {_EXAMPLES[name]}")
    return value


def _number(value: Any, where: str) -> float:
    try:
        number = float(value) if isinstance(value, int | float) else math.nan
    except OverflowError:  # an integer of hundreds of digits
        number = math.inf
    if isinstance(value, bool) or not math.isfinite(number):
        raise PromptError(f"{where}: {str(value)[:40]!r} is not a finite number")
    return number


def _box(value: Any, where: str) -> tuple[float, float, float, float]:
    if not isinstance(value, list) or len(value) != 4:
        raise PromptError(f"{where}: a box is [x1, y1, x2, y2]")
    x1, y1, x2, y2 = (_number(v, where) for v in value)
    if x2 <= x1 or y2 <= y1:
        raise PromptError(f"{where}: a box needs x2 > x1 and y2 > y1, got {value}")
    return x1, y1, x2, y2


def _points(
    value: Any, labels: Any, where: str
) -> tuple[tuple[tuple[float, float], ...], tuple[int, ...]]:
    if not isinstance(value, list):
        raise PromptError(f"{where}: points are a list of [x, y]")
    if len(value) > MAX_POINTS:
        raise PromptError(f"{where}: {len(value)} points; at most {MAX_POINTS} per object")
    points = []
    for point in value:
        if not isinstance(point, list) or len(point) != 2:
            raise PromptError(f"{where}: a point is [x, y], got {point!r}")
        points.append((_number(point[0], where), _number(point[1], where)))
    if labels is None:
        labels = [1] * len(points)
    if not isinstance(labels, list) or len(labels) != len(points):
        raise PromptError(f"{where}: one label per point (1: in the object, 0: not)")
    if any(label not in (0, 1) or isinstance(label, bool) for label in labels):
        raise PromptError(f"{where}: labels are 1 (in the object) or 0 (not), got {labels}")
    return tuple(points), tuple(int(v) for v in labels)
