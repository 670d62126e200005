"""The models and pipelines files: the shipped ones load; malformed ones are refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.catalogue import CatalogueError, expand, load_catalogue
from common.settings import Settings
from tests.support.catalogue import CATALOGUE, SHIPPED_PIPELINES

SHIPPED = SHIPPED_PIPELINES


def test_shipped_pipelines_and_models() -> None:
    assert set(CATALOGUE.pipelines) == SHIPPED
    assert {m.task for m in CATALOGUE.models.values()} == {"detect", "segment", "faces", "sam"}
    # Every SAM-family file keeps the name Ultralytics builds it by.
    endings = ("mobile_sam.pt", "sam_b.pt", "sam_l.pt", "sam_h.pt")
    endings += tuple(f"sam2_{k}.pt" for k in "tsbl")
    sam = [m for m in CATALOGUE.models.values() if m.task == "sam"]
    assert sorted(m.weights.name for m in sam if m.weights) == sorted(endings)
    assert CATALOGUE.pipelines["redact"].defaults()["blur_method"] == "pixelate"
    assert [s.name for s in CATALOGUE.pipelines["detect-crops"].steps] == [
        "preprocess.image",
        "inference.detect",
        "postprocess.crops",
    ]


def test_environment_variables_in_values() -> None:
    env = {"W": "/x/y.pt"}
    assert expand({"a": ["${W}", "${MISSING:-d.pt}", "${MISSING}"]}, env) == {
        "a": ["/x/y.pt", "d.pt", ""]
    }


def write(tmp_path: Path, models: str, pipelines: str) -> Settings:
    (tmp_path / "m.yaml").write_text(models)
    (tmp_path / "p.yaml").write_text(pipelines)
    return Settings(models_file=tmp_path / "m.yaml", pipelines_file=tmp_path / "p.yaml")


MODELS = "models:\n  d: {task: detect, weights: w.pt}\n  f: {task: faces}\n"


@pytest.mark.parametrize(
    ("models", "pipelines", "message"),
    [
        ("models: []", "pipelines: {}", "expected a mapping under 'models:'"),
        ("models:\n  d: {task: classify, weights: w.pt}\n", "pipelines: {}", "task must be"),
        ("models:\n  d: {task: detect}\n", "pipelines: {}", "a weights path is needed"),
        ("models:\n  d: {task: detect, weights: w.tflite}\n", "pipelines: {}", "format must"),
        (
            "models:\n  d: {task: detect, weights: w.pt, max_wait_ms: 5000}\n",
            "pipelines: {}",
            "max_wait_ms must be 0 to 1000",
        ),
        (
            "models:\n  d: {task: detect, weights: w.pt, max_batch: 0}\n",
            "pipelines: {}",
            "max_batch must be 1 to 1024",
        ),
        (
            "models:\n  d: {task: faces, format: 'null'}\n",
            "pipelines: {}",
            "a null model is a detect model with no weights",
        ),
        (
            MODELS,
            "pipelines:\n  p: {model: d, steps: [preprocess.image, inference.x]}\n",
            "unknown steps ['inference.x']",
        ),
        (
            MODELS,
            "pipelines:\n  p: {model: d, steps: [inference.detect]}\n",
            "one preprocess, inference, postprocess",
        ),
        (
            MODELS,
            "pipelines:\n  p: {model: f, steps: [preprocess.image, inference.detect, "
            "postprocess.annotate]}\n",
            "model must name a detect model",
        ),
        (
            MODELS,
            "pipelines:\n  p: {model: d, steps: [preprocess.image, inference.detect, "
            "postprocess.annotate], defaults: {blur_method: pixelate}}\n",
            "defaults for options its steps do not read: ['blur_method']",
        ),
    ],
)
def test_malformed_files_are_refused(
    tmp_path: Path, models: str, pipelines: str, message: str
) -> None:
    with pytest.raises(CatalogueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_catalogue(write(tmp_path, models, pipelines))
