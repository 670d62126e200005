"""Cutting a plan into chunks (celery_worker.video.chunks): sizes, keyframes, coverage."""

from __future__ import annotations

import pytest

from celery_worker.video.chunks import chunk_frames_for, chunk_ranges_at_keyframes


@pytest.mark.parametrize(
    ("size", "max_frames", "max_bytes", "expected"),
    [
        ((320, 240), 64, 10**9, 64),
        ((320, 240), 64, 320 * 240 * 3 * 10, 10),
        ((320, 240), 64, 320 * 240 * 3 * 10 - 1, 9),
        ((3840, 2160), 64, 1000, 1),
    ],
)
def test_chunk_frames_for(
    size: tuple[int, int], max_frames: int, max_bytes: int, expected: int
) -> None:
    per = chunk_frames_for(*size, max_frames, max_bytes)
    assert per == expected
    assert per == 1 or per * size[0] * size[1] * 3 <= max_bytes


@pytest.mark.parametrize(
    ("total", "per"), [(0, 5), (1, 5), (5, 5), (6, 5), (17, 4), (100, 1), (100, 99), (7, 100)]
)
def test_chunk_ranges_cover_every_frame_once(total: int, per: int) -> None:
    ranges = chunk_ranges_at_keyframes(list(range(total)), per, frozenset())  # no keyframes
    covered = [i for start, count in ranges for i in range(start, start + count)]
    assert covered == list(range(total))
    assert all(1 <= count <= per for _, count in ranges)
    assert len(ranges) == -(-total // per)


@pytest.mark.parametrize(
    ("total", "per_chunk", "key_every", "starts"),
    [
        (200, 64, 30, [0, 60, 120, 180]),  # cut at the last keyframe in each chunk's second half
        (100, 64, 100, [0, 64]),  # no keyframe near: plain cuts
        (50, 8, 3, [0, 6, 12, 18, 24, 30, 36, 42]),
        (10, 1, 2, list(range(10))),
        (0, 8, 4, []),
    ],
)
def test_chunks_start_on_keyframes_without_gap_overlap_or_growing(
    total: int, per_chunk: int, key_every: int, starts: list[int]
) -> None:
    pts = [512 * k for k in range(total)]
    keys = frozenset(pts[::key_every])
    ranges = chunk_ranges_at_keyframes(pts, per_chunk, keys)
    assert [start for start, _ in ranges] == starts
    covered = [i for start, count in ranges for i in range(start, start + count)]
    assert covered == list(range(total))
    assert all(1 <= count <= per_chunk for _, count in ranges)
