"""The registered steps in the catalogue: video options, renderings, the implied video step."""

from __future__ import annotations

from typing import Any

import pytest

from common.catalogue import CatalogueError, load_pipelines
from common.steps import VIDEO_STEP
from tests.support.catalogue import CATALOGUE, PIPELINES


@pytest.mark.parametrize("name", list(PIPELINES))
def test_every_pipeline_offers_the_video_options_marked_as_such(name: str) -> None:
    options = {o.name: o for o in PIPELINES[name].options}
    assert options["fps"].media == options["max_side"].media == "video"
    assert options["fps"].default is None and options["max_side"].default is None
    described = {o["name"]: o for o in PIPELINES[name].describe()["options"]}
    assert described["fps"]["media"] == "video"
    assert {o["media"] for n, o in described.items() if n not in ("fps", "max_side")} == {"any"}


def test_a_pipeline_may_not_list_the_video_step(tmp_path: Any) -> None:
    path = tmp_path / "pipelines.yaml"
    path.write_text(
        "pipelines:\n  p:\n    model: yolov8n\n"
        f"    steps: [{VIDEO_STEP.name}, inference.detect, postprocess.annotate]\n"
    )
    with pytest.raises(CatalogueError, match="implied for videos"):
        load_pipelines(path, CATALOGUE.models, {})
