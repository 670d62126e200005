"""Job records as the API shows them: a video's progress."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from api.views import progress


def record(state: str, **fields: Any) -> dict[str, Any]:
    return {
        "state": state,
        "steps": [{"name": "preprocess", "started_at": "2026-01-01T00:00:00+00:00"}],
        "finished_at": None,
        **fields,
    }


NOW = datetime.fromisoformat("2026-01-01T00:00:10+00:00")


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (record("running"), None),
        (
            record("running", frames_total="100", chunks_total="4"),
            {"frames_done": 0, "percent": 0.0, "eta_seconds": None},
        ),
        (
            record(
                "running",
                frames_total="100",
                chunks_total="4",
                **{"frames_done:inference": "50", "frames_done:postprocess": "25"},
            ),
            {"frames_done": 25, "percent": 25.0, "eta_seconds": 30.0, "frames_per_second": 2.5},
        ),
        (
            record(
                "succeeded",
                frames_total="100",
                finished_at="2026-01-01T00:00:20+00:00",
                **{"frames_done:postprocess": "100"},
            ),
            {"frames_done": 100, "percent": 100.0, "eta_seconds": 0.0, "frames_per_second": 5.0},
        ),
        (
            record("failed", frames_total="100", **{"frames_done:postprocess": "10"}),
            {"frames_done": 10, "eta_seconds": None},
        ),
    ],
    ids=["image-or-unplanned", "planned", "running", "succeeded", "failed"],
)
def test_progress_of_a_video_job(job: dict[str, Any], expected: dict[str, Any] | None) -> None:
    found = progress(job, now=NOW)
    if expected is None:
        assert found is None
        return
    assert found is not None
    assert {k: found[k] for k in expected} == expected
    assert found["frames_total"] == 100
