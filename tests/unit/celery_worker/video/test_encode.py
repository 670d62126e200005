"""Encoding segments and joining them (celery_worker.video.encode)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from celery_worker.video.encode import concat_segments, encode_segment, thumbnail_strip
from common.videos import probe_video
from tests.support.videos import chunk_ranges, moving_shapes, psnr, read_all

BIG = 10**9


@pytest.mark.parametrize("fps", [Fraction(10), Fraction(30000, 1001), Fraction(25, 2)])
def test_segments_join_into_one_mp4_at_exact_times(tmp_path: Path, fps: Fraction) -> None:
    source = tmp_path / "in.mkv"
    moving_shapes(source, seconds=2, fps=15)
    frames, _, _ = read_all(source)
    segments = []
    for index, (start, count) in enumerate(chunk_ranges(len(frames), 8)):
        segment = tmp_path / f"seg-{index}.mp4"
        assert encode_segment(segment, frames[start : start + count], fps) == count
        segments.append(segment)
    with av.open(str(segments[1])) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
        assert all(p.pts == p.dts for p in packets), "no B-frames"
    out = tmp_path / "out" / "joined.mp4"
    out.parent.mkdir()
    assert concat_segments(segments, out, fps) == len(frames)
    assert [p.name for p in out.parent.iterdir()] == ["joined.mp4"]
    data = out.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat"), "+faststart"
    decoded, _, times = read_all(out)
    assert len(decoded) == len(frames)
    np.testing.assert_allclose(times, [k / float(fps) for k in range(len(frames))], atol=1e-6)
    for original, copy in zip(frames, decoded, strict=True):
        assert psnr(original, copy) > 35
    info = probe_video(out, BIG, 60)
    assert info.frame_rate == f"{fps.numerator}/{fps.denominator}"
    assert info.frames == len(frames)


def test_encode_refuses_frames_of_another_size(tmp_path: Path) -> None:
    frames = [np.zeros((64, 64, 3), np.uint8), np.zeros((32, 64, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 1"):
        encode_segment(tmp_path / "s.mp4", frames, Fraction(10))
    with pytest.raises(ValueError, match="at least one frame"):
        encode_segment(tmp_path / "s.mp4", [], Fraction(10))


def test_thumbnail_strip() -> None:
    images = [np.full((192, 256, 3), 50, np.uint8), np.full((96, 48, 3), 200, np.uint8)]
    strip = thumbnail_strip(images, height=96)
    assert strip.shape == (96, 128 + 48, 3)
    assert (strip[:, :128] == 50).all() and (strip[:, 128:] == 200).all()
