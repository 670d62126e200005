"""The one detection type: validation, one rounding, a lossless JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from celery_worker.detections import Detections


def faces() -> Detections:
    return Detections(
        xyxy=np.array([[10.123456, 20.0, 30.5, 40.25], [1, 2, 3, 4]]),
        confidence=np.array([0.987654321, 0.5]),
        class_id=np.array([0, 0]),
        class_name=("face", "face"),
        landmarks=np.arange(20, dtype=float).reshape(2, 5, 2) + 0.123,
    )


def test_to_json_rounds_once_and_keeps_every_column() -> None:
    items = faces().to_json()
    assert items[0]["box"] == [10.123, 20.0, 30.5, 40.25]
    assert items[0]["confidence"] == 0.987654
    assert items[0]["class_name"] == "face" and items[0]["class_id"] == 0
    assert items[1]["landmarks"][0] == [10.12, 11.12]
    assert "polygons" not in items[0] and "track_id" not in items[0]
    assert json.loads(json.dumps(items)) == items


def test_json_round_trip() -> None:
    segmented = Detections(
        xyxy=np.array([[0, 0, 10, 10]]),
        confidence=np.array([0.9]),
        class_id=np.array([2]),
        class_name=("car",),
        polygons=([[[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]]],),
        area=(50,),
        track_id=(7,),
    )
    for detections in (faces(), segmented, Detections.empty()):
        items = detections.to_json()
        again = Detections.from_json(items)
        assert again.to_json() == items
        assert len(again) == len(detections)


def test_extra_keys_of_a_writer_are_ignored() -> None:
    items = faces().to_json()
    items[0]["rle"] = {"size": [1, 1], "counts": [1]}
    assert Detections.from_json(items).to_json()[0].keys() == faces().to_json()[0].keys()


def test_columns_must_have_one_row_per_detection() -> None:
    with pytest.raises(ValueError, match="rows"):
        Detections(np.zeros((2, 4)), np.zeros(1), np.zeros(2), ("a", "b"))
    with pytest.raises(ValueError, match="rows"):
        faces().with_columns(track_id=(1,))


def test_labels_and_empty() -> None:
    assert faces().labels() == ["face 0.99", "face 0.50"]
    empty = Detections.empty()
    assert len(empty) == 0 and empty.xyxy.shape == (0, 4) and empty.to_json() == []
