"""The model registry: built from the models file; never stands in for missing weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from celery_worker.errors import ModelUnavailable
from celery_worker.models import LoadedModel, ModelRegistry, ModelSpec, pick_device, specs_from
from common.catalogue import ModelConfig


def yolo(weights: Path) -> dict[str, ModelConfig]:
    return {"yolov8n": ModelConfig("yolov8n", "detect", weights, "pt")}


def test_missing_weights_make_the_model_unavailable_with_the_path(tmp_path: Path) -> None:
    registry = ModelRegistry(specs_from(yolo(tmp_path / "absent.pt")))
    with pytest.raises(ModelUnavailable, match=f"no weights file at {tmp_path / 'absent.pt'}"):
        registry.get("yolov8n")
    report = registry.load_all()
    assert report["yolov8n"]["available"] is False
    assert "absent.pt" in report["yolov8n"]["reason"]


def test_unknown_model() -> None:
    with pytest.raises(ModelUnavailable, match="no model named 'x'"):
        ModelRegistry({}).get("x")


def test_a_model_is_loaded_once_per_process() -> None:
    calls = []

    def loader(spec: ModelSpec, device: str) -> object:
        calls.append(device)
        return LoadedModel(spec, object(), device, {"name": spec.name})

    registry = ModelRegistry({"m": ModelSpec("m", "detect", loader)}, "cpu")
    assert registry.get("m") is registry.get("m")
    assert calls == ["cpu"]


def test_device_choice_on_a_cpu_host() -> None:
    import torch

    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto") == expected
    assert pick_device("cpu") == "cpu"


def test_corrupt_weights_file_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    registry = ModelRegistry(specs_from(yolo(bad)), "cpu")
    with pytest.raises(ModelUnavailable, match="failed to load"):
        registry.get("yolov8n")


def test_class_names_override_and_report(yolo_weights: Path) -> None:
    config = ModelConfig("renamed", "detect", yolo_weights, "pt", classes={0: "worker"})
    loaded = ModelRegistry(specs_from({"renamed": config}), "cpu").get("renamed")
    assert loaded.info["names"][0] == "worker" and loaded.info["names"][1] == "1"
    assert loaded.info["weights_bytes"] == yolo_weights.stat().st_size
    assert loaded.info["format"] == "pt" and loaded.info["name"] == "renamed"


@pytest.mark.parametrize("shape", [(1, 1, 3), (19, 400, 3), (4, 16, 16, 3)])
def test_pictures_smaller_than_the_smallest_face_have_none(shape: tuple[int, ...]) -> None:
    from facenet_pytorch import MTCNN

    from celery_worker.models import detect_faces

    model = MTCNN(keep_all=True, device="cpu")
    boxes, probs, landmarks = detect_faces(model, np.zeros(shape, dtype=np.uint8))
    if len(shape) == 3:
        assert (boxes, probs, landmarks) == (None, None, None)
    else:
        assert list(boxes) == [None] * shape[0]
    # ...where MTCNN itself fails on them.
    with pytest.raises((RuntimeError, ValueError)):
        model.detect(np.zeros(shape, dtype=np.uint8), landmarks=True)
    # A picture the size of the smallest face is searched as usual (and has none here).
    assert detect_faces(model, np.zeros((20, 20, 3), dtype=np.uint8))[0] is None
