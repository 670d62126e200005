"""Decoding chunks (celery_worker.video.decode): equal to one sequential decode, damage named.

Every video is generated here by tests/support/videos.py, so pixels and timestamps can
be checked exactly.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from celery_worker.video.decode import decode_chunk
from celery_worker.video.plan import plan_frames
from tests.support.videos import (
    chunk_ranges,
    corrupt_middle,
    decode_in_chunks,
    live_recording,
    moving_shapes,
    psnr,
    read_all,
    rotated,
    truncate,
)


@pytest.mark.parametrize(
    ("name", "fps"),
    [("a.mp4", None), ("a.mp4", 10), ("a.mkv", 12.5), ("a.webm", None), ("a.avi", None)],
)
def test_decode_in_chunks_equals_one_sequential_decode(
    tmp_path: Path, name: str, fps: float | None
) -> None:
    """Chunks seek to keyframes (every 8 frames, with B-frames for H.264)."""
    path = tmp_path / name
    moving_shapes(path, seconds=2, fps=24, keyint=8)
    frames, pts, _ = read_all(path)
    plan = plan_frames(path, fps)
    expected = np.stack([frames[pts.index(p)] for p in plan.source_pts])
    for per_chunk in (1, 5, 8, 13, len(plan.source_pts)):
        decoded = decode_in_chunks(path, plan.source_pts, per_chunk)
        assert (decoded.missing, decoded.damaged) == ([], [])
        assert np.array_equal(decoded.frames, expected), per_chunk


@pytest.mark.timeout(60)
def test_decode_in_chunks_of_a_file_without_an_index(tmp_path: Path) -> None:
    """A live WebM has no cues: seeking scans, and must still give the same frames."""
    path = tmp_path / "live.webm"
    live_recording(path, seconds=3, fps=10)
    frames, pts, _ = read_all(path)
    plan = plan_frames(path)
    assert plan.source_pts == pts and plan.warnings == []
    for per_chunk in (4, 7):
        ranges = chunk_ranges(len(pts), per_chunk)
        parts = [decode_chunk(path, pts[s : s + n], 0, (160, 120)) for s, n in ranges]
        assert all(p.missing == p.damaged == [] for p in parts)
        assert np.array_equal(np.concatenate([p.frames for p in parts]), np.stack(frames))


def test_decode_resizes_with_inter_area(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    moving_shapes(path, seconds=1, fps=10)
    frames, pts, _ = read_all(path)
    decoded = decode_chunk(path, pts[3:7], 0, (200, 150))
    expected = [cv2.resize(f, (200, 150), interpolation=cv2.INTER_AREA) for f in frames[3:7]]
    assert np.array_equal(decoded.frames, np.stack(expected))


def test_decode_repeats_a_pts_the_plan_repeats(tmp_path: Path) -> None:
    path = tmp_path / "a.webm"
    moving_shapes(path, seconds=1, fps=10)
    frames, pts, _ = read_all(path)
    decoded = decode_chunk(path, [pts[2], pts[2], pts[3]], 0, (320, 240))
    assert np.array_equal(decoded.frames, np.stack([frames[2], frames[2], frames[3]]))


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_decode_turns_frames_upright(tmp_path: Path, degrees: int) -> None:
    path = tmp_path / "r.mp4"
    upright = rotated(path, degrees, size=(160, 96))
    _, pts, _ = read_all(path)
    decoded = decode_chunk(path, pts, degrees, (160, 96))
    assert decoded.frames.shape == (len(pts), 96, 160, 3)
    for frame in decoded.frames:
        assert psnr(frame, upright) > 35
        assert frame[16, 16].tolist() == pytest.approx([0, 0, 255], abs=12)  # red, top left


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("a.mp4", "missing"),  # the index survives; the decoder refuses the packets
        ("a.mkv", "damaged"),  # frames decoded from lost references are flagged
        ("a.webm", "warnings"),  # the demuxer skips the garbage: a stretch without frames
        ("a.avi", "damaged"),
    ],
)
def test_a_corrupt_middle_is_named_never_raised(tmp_path: Path, name: str, named: str) -> None:
    clean, broken = tmp_path / name, tmp_path / f"broken-{name}"
    moving_shapes(clean, seconds=4, fps=10)
    corrupt_middle(clean, broken)
    plan = plan_frames(broken)
    decoded = decode_in_chunks(broken, plan.source_pts, 8)
    assert len(decoded.frames) == len(plan.source_pts) > 0
    found = {"missing": decoded.missing, "damaged": decoded.damaged, "warnings": plan.warnings}
    assert found[named], found
    # what did decode is right: the first frames, before the damage, are intact
    frames, _, _ = read_all(clean)
    assert psnr(decoded.frames[0], frames[0]) > 40
    for position in decoded.missing:  # filled with the chunk's frame before, or black
        first_of_chunk = position % 8 == 0
        expected = np.zeros_like(frames[0]) if first_of_chunk else decoded.frames[position - 1]
        assert np.array_equal(decoded.frames[position], expected)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["a.mkv", "a.webm", "a.avi"])
def test_a_truncated_file_keeps_what_it_has_and_says_so(tmp_path: Path, name: str) -> None:
    clean, cut = tmp_path / name, tmp_path / f"cut-{name}"
    moving_shapes(clean, seconds=4, fps=10)
    truncate(clean, cut, 0.5)
    plan = plan_frames(cut)
    assert 10 <= len(plan.source_pts) < 40
    assert any("ends early" in w for w in plan.warnings), plan.warnings
    decoded = decode_in_chunks(cut, plan.source_pts, 8)
    assert len(decoded.frames) == len(plan.source_pts)
    assert len(decoded.missing) <= 2
