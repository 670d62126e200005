"""Frame plans (celery_worker.video.plan): constant rates, decimation, sizes, damaged files."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from celery_worker.video.decode import decode_chunk
from celery_worker.video.demux import VideoDecodeError
from celery_worker.video.plan import output_size, plan_frames
from tests.support.videos import moving_shapes, read_all, truncate, variable_rate


def _expected_picks(count: int, source_fps: float, fps: float) -> list[int]:
    """Nearest source frame to k / fps, ties to the earlier one."""
    return [math.ceil(k * source_fps / fps - 0.5) for k in range(count)]


@pytest.mark.parametrize(
    ("fps", "rate", "count"),
    [
        (None, Fraction(30), 90),
        (10, Fraction(10), 30),
        (15, Fraction(15), 45),
        (7, Fraction(7), 21),
        (12.5, Fraction(25, 2), 38),
        (60, Fraction(30), 90),  # above the source: clamped
        (30, Fraction(30), 90),
        (20, Fraction(20), 60),  # every odd k falls half-way: the earlier frame wins
    ],
)
def test_plan_decimates_to_a_constant_rate(
    tmp_path: Path, fps: float | None, rate: Fraction, count: int
) -> None:
    path = tmp_path / "a.mp4"
    moving_shapes(path, seconds=3, fps=30)
    _, pts, _ = read_all(path)
    plan = plan_frames(path, fps)
    assert plan.fps == rate
    assert len(plan.source_pts) == count
    picks = [pts.index(p) for p in plan.source_pts]
    assert picks == _expected_picks(count, 30, float(rate))
    np.testing.assert_allclose(plan.source_times, [i / 30 for i in picks], atol=1e-9)
    assert (plan.declared_frames, plan.found_frames, plan.warnings) == (90, 90, [])


def test_plan_of_30_fps_at_10_keeps_every_third_frame(tmp_path: Path) -> None:
    path = tmp_path / "a.mkv"
    moving_shapes(path, seconds=3, fps=30)
    _, pts, _ = read_all(path)
    plan = plan_frames(path, 10)
    assert [pts.index(p) for p in plan.source_pts] == list(range(0, 90, 3))
    np.testing.assert_allclose(plan.source_times, [k / 10 for k in range(30)], atol=1e-3)


@pytest.mark.parametrize("name", ["a.mkv", "a.mp4", "a.webm"])
def test_plan_keeps_an_ntsc_rate_exact_and_adds_no_frame(tmp_path: Path, name: str) -> None:
    """Matroska stores milliseconds: 30000/1001 must still give exactly one frame each."""
    path = tmp_path / name
    moving_shapes(path, seconds=3, fps=Fraction(30000, 1001))
    _, pts, _ = read_all(path)
    plan = plan_frames(path)
    assert plan.fps == Fraction(30000, 1001)
    assert plan.source_pts == sorted(pts) and len(pts) == 90


def test_plan_normalises_a_variable_rate_to_a_constant_one(tmp_path: Path) -> None:
    gaps = [33, 50, 17, 67, 33, 100, 20, 180, 40]
    path = tmp_path / "vfr.mp4"
    times = variable_rate(path, gaps)
    plan = plan_frames(path, fps=20)
    assert plan.fps == 20
    duration = times[-1] + 1 / _average_rate(path)  # the last frame lasts an average frame
    count = math.ceil(duration * 20)
    assert len(plan.source_pts) == count
    expected = [
        min(range(len(times)), key=lambda i: (abs(times[i] - k / 20), times[i]))
        for k in range(count)
    ]
    _, pts, _ = read_all(path)
    picks = [pts.index(p) for p in plan.source_pts]
    assert picks == expected
    assert len(set(picks)) < len(picks), "the 180 ms gap repeats a frame"
    assert len(set(picks)) < len(times), "the 17 ms gap drops a frame"
    np.testing.assert_allclose(plan.source_times, [times[i] for i in picks], atol=1e-3)
    # and the decoded frames show those source frames: frame i has its bar at 4 * i
    decoded = decode_chunk(path, plan.source_pts, 0, (160, 120))
    bars = [int(np.argmax(frame[:, :, 1].mean(axis=0) > 240)) for frame in decoded.frames]
    assert bars == [4 * i for i in picks]


def _average_rate(path: Path) -> float:
    with av.open(str(path)) as container:
        return float(container.streams.video[0].average_rate or 0)


def test_plan_measures_the_rate_when_the_declared_one_is_nonsense(tmp_path: Path) -> None:
    """Matroska declares the 1 ms time base as the rate here: 1000 fps would repeat frames."""
    path = tmp_path / "vfr.mkv"
    variable_rate(path, [40, 80, 40, 80, 40, 80])
    with av.open(str(path)) as container:
        assert container.streams.video[0].average_rate == 1000
    plan = plan_frames(path)
    assert plan.fps == Fraction(6, 360) * 1000  # 6 gaps in 360 ms
    assert len(plan.source_pts) == len(set(plan.source_pts)) == 7


def test_plan_raises_only_when_no_frame_can_be_read(tmp_path: Path) -> None:
    path = tmp_path / "noise.mkv"
    path.write_bytes(np.random.default_rng(2).bytes(10_000))
    with pytest.raises(VideoDecodeError):
        plan_frames(path)


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((1920, 1080), None, (1920, 1080)),
        ((1920, 1080), 640, (640, 360)),
        ((1080, 1920), 640, (360, 640)),
        ((320, 240), 160, (160, 120)),
        ((320, 240), 1000, (320, 240)),  # never upscaled
        ((321, 241), None, (320, 240)),  # even, never above the source
        ((1000, 10), 100, (100, 2)),  # at least 2
        ((161, 97), 161, (160, 96)),
    ],
)
def test_output_size(
    size: tuple[int, int], max_side: int | None, expected: tuple[int, int]
) -> None:
    assert output_size(*size, max_side) == expected


def test_a_truncated_mp4_without_its_index_is_a_decode_error(tmp_path: Path) -> None:
    clean, cut = tmp_path / "a.mp4", tmp_path / "cut.mp4"
    moving_shapes(clean, seconds=2, fps=10)
    truncate(clean, cut, 0.5)
    with pytest.raises(VideoDecodeError, match="cannot be opened"):
        plan_frames(cut)


def test_plan_refuses_a_video_longer_than_its_header_said(tmp_path: Path) -> None:

    path = tmp_path / "long.mkv"
    moving_shapes(path, seconds=2, fps=10)
    assert len(plan_frames(path, max_seconds=5).source_pts) == 20
    with pytest.raises(VideoDecodeError, match="longer than 1 s"):
        plan_frames(path, max_seconds=1)


def test_the_plan_names_the_keyframes(tmp_path: Path) -> None:

    path = tmp_path / "k.mp4"
    moving_shapes(path, seconds=3, fps=10, keyint=10)
    plan = plan_frames(path)
    assert sorted(plan.source_pts.index(p) for p in plan.keyframes) == [0, 10, 20]
