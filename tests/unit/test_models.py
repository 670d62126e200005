"""The model registry refuses to stand in for missing weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_worker.errors import ModelUnavailable
from celery_worker.models import ModelRegistry, ModelSpec, default_specs, pick_device
from common.contract import MODEL_MTCNN, MODEL_YOLO_DETECT
from common.settings import Settings


def test_missing_weights_make_the_model_unavailable_with_the_path(tmp_path: Path) -> None:
    settings = Settings(detect_weights=tmp_path / "absent.pt")
    registry = ModelRegistry({MODEL_YOLO_DETECT: default_specs(settings)[MODEL_YOLO_DETECT]})
    with pytest.raises(ModelUnavailable, match=f"no weights file at {tmp_path / 'absent.pt'}"):
        registry.get(MODEL_YOLO_DETECT)
    report = registry.load_all()
    assert report[MODEL_YOLO_DETECT]["available"] is False
    assert "absent.pt" in report[MODEL_YOLO_DETECT]["reason"]


def test_unknown_model() -> None:
    with pytest.raises(ModelUnavailable, match="no model named 'x'"):
        ModelRegistry({}).get("x")


def test_a_model_is_loaded_once_per_process() -> None:
    calls = []

    def loader(spec: ModelSpec, device: str) -> object:
        from celery_worker.models import LoadedModel

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
    registry = ModelRegistry(default_specs(Settings(detect_weights=bad)), "cpu")
    with pytest.raises(ModelUnavailable, match="failed to load"):
        registry.get(MODEL_YOLO_DETECT)
    assert MODEL_MTCNN in registry.specs
