"""Decoding chunks (celery_worker.video.decode): equal to one sequential decode, damage named.

Every video is generated here by tests/support/videos.py, so pixels and timestamps can
be checked exactly.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from av.video.frame import VideoFrame

from celery_worker.video import decode
from celery_worker.video.decode import decode_chunk
from celery_worker.video.demux import FrameTooLarge, VideoDecodeError
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


def _growing(path: Path, sizes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    """A VP8 WebM whose stream declares ``sizes[0]`` and switches to ``sizes[1]`` (at a
    keyframe) after 5 frames, as a camera or a crafted file may: 5 frames of each."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=10)
        stream.width, stream.height = sizes[0]
        stream.pix_fmt = "yuv420p"
        encoders = [stream.codec_context, av.CodecContext.create("libvpx", "w")]
        second = encoders[1]
        second.width, second.height = sizes[1]
        second.pix_fmt, second.time_base, second.framerate = "yuv420p", Fraction(1, 10), 10
        packets: list[av.Packet] = []
        for encoder, (width, height) in zip(encoders, sizes, strict=True):
            for index in range(5):
                image = np.full((height, width, 3), 40 * index, np.uint8)
                frame = av.VideoFrame.from_ndarray(image, format="bgr24")
                frame.pts, frame.time_base = index, Fraction(1, 10)
                packets += encoder.encode(frame)
            packets += encoder.encode(None)
        for index, packet in enumerate(packets):
            packet.stream, packet.time_base = stream, Fraction(1, 10)
            packet.pts = packet.dts = index
            container.mux(packet)


@pytest.fixture
def converted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The sizes of the frames decode_chunk converts to arrays (each still converted)."""
    sizes: list[tuple[int, int]] = []
    real = decode._to_bgr

    def spy(frame: VideoFrame, rotation: int, size: tuple[int, int]) -> np.ndarray:
        sizes.append((frame.width, frame.height))
        return real(frame, rotation, size)

    monkeypatch.setattr(decode, "_to_bgr", spy)
    return sizes


def test_a_frame_over_the_pixel_limit_fails_before_it_is_converted(
    tmp_path: Path, converted: list[tuple[int, int]]
) -> None:
    path = tmp_path / "grows.webm"
    _growing(path, ((160, 120), (320, 240)))
    plan = plan_frames(path)
    assert len(decode_chunk(path, plan.source_pts, 0, (160, 120)).missing) == 0  # no limit
    converted.clear()
    with pytest.raises(FrameTooLarge, match=r"320x240 = 76800 pixels; the limit is 50000") as e:
        decode_chunk(path, plan.source_pts, 0, (160, 120), max_pixels=50_000)
    assert converted == [(160, 120)] * 5, "the large frame never reached to_ndarray"
    # a VideoDecodeError: preprocess_chunk fails the job with kind "input" (InputError)
    assert isinstance(e.value, VideoDecodeError)


def test_a_stream_declaring_frames_over_the_limit_fails_before_decoding(
    tmp_path: Path, converted: list[tuple[int, int]]
) -> None:
    path = tmp_path / "a.mkv"
    moving_shapes(path, seconds=1, fps=10)
    _, pts, _ = read_all(path)
    with pytest.raises(FrameTooLarge, match=r"declares frames of 320x240"):
        decode_chunk(path, pts, 0, (320, 240), max_pixels=320 * 240 - 1)
    assert converted == []
    assert len(decode_chunk(path, pts, 0, (320, 240), max_pixels=320 * 240).frames) == len(pts)


def test_the_decoder_refuses_frames_far_over_the_limit(
    tmp_path: Path, converted: list[tuple[int, int]]
) -> None:
    """FFmpeg's max_pixels (PyAV 18 passes codec_context.options to the decoder): a
    picture past twice the limit is never allocated; it is a missing frame, as an
    undecodable one is."""
    path = tmp_path / "grows.webm"
    _growing(path, ((160, 120), (480, 360)))  # 9 times the pixels
    plan = plan_frames(path)
    decoded = decode_chunk(path, plan.source_pts, 0, (160, 120), max_pixels=160 * 120)
    assert decoded.missing == [5, 6, 7, 8, 9]
    assert converted == [(160, 120)] * 5
