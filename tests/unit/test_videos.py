"""Video I/O: probe (common.videos) and plan, decode, encode, join (celery_worker.video).

Every video is generated here by tests/support/videos.py: tiny, near-lossless, with
known content, so pixels and timestamps can be checked exactly.
"""

from __future__ import annotations

import io
import math
import wave
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from celery_worker.video import (
    DecodedChunk,
    VideoDecodeError,
    chunk_frames_for,
    chunk_ranges,
    concat_segments,
    decode_chunk,
    encode_segment,
    output_size,
    plan_frames,
    thumbnail_strip,
)
from common.videos import CONTAINERS, NotAVideo, VideoUnprocessable, probe_video
from tests.support.videos import (
    corrupt_middle,
    live_recording,
    moving_shapes,
    rotated,
    truncate,
    variable_rate,
)

BIG = 10**9


def read_all(path: Path) -> tuple[list[np.ndarray], list[int], list[float]]:
    """Every frame of the file decoded in one pass: BGR, pts, seconds."""
    frames, pts, times = [], [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="bgr24"))
            pts.append(frame.pts)
            times.append(float(frame.pts * stream.time_base))
    return frames, pts, times


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255**2 / error))


def decode_in_chunks(path: Path, pts: list[int], per_chunk: int) -> DecodedChunk:
    """decode_chunk over each chunk, joined as one chunk (positions from the first)."""
    ranges = chunk_ranges(len(pts), per_chunk)
    parts = [decode_chunk(path, pts[start : start + n], 0, (320, 240)) for start, n in ranges]
    starts = [start for start, _ in ranges]
    return DecodedChunk(
        np.concatenate([p.frames for p in parts]),
        [s + i for s, p in zip(starts, parts, strict=True) for i in p.missing],
        [s + i for s, p in zip(starts, parts, strict=True) for i in p.damaged],
    )


# --- probe ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "container", "codec", "fps", "frame_rate"),
    [
        ("a.mp4", "mp4", "h264", Fraction(30000, 1001), "30000/1001"),
        ("a.mov", "mov", "h264", Fraction(25), "25/1"),
        ("a.mkv", "mkv", "h264", Fraction(30), "30/1"),
        ("a.webm", "webm", "vp9", Fraction(24), "24/1"),
        ("a.avi", "avi", "mpeg4", Fraction(15), "15/1"),
        ("a.mjpeg.avi", "avi", "mjpeg", Fraction(10), "10/1"),
    ],
)
def test_probe_accepts_each_container(
    tmp_path: Path, name: str, container: str, codec: str, fps: Fraction, frame_rate: str
) -> None:
    path = tmp_path / name
    moving_shapes(path, seconds=2, fps=fps)
    info = probe_video(path, max_pixels=320 * 240, max_seconds=2.5)
    assert (info.container, info.codec) == (container, codec)
    assert (info.content_type, info.extension) == CONTAINERS[container]
    assert (info.width, info.height, info.rotation) == (320, 240, 0)
    assert info.frame_rate == frame_rate and info.fps == pytest.approx(float(fps))
    assert info.duration == pytest.approx(2, abs=0.05)
    assert info.frames == round(2 * fps)
    assert info.as_dict()["frame_rate"] == frame_rate


def test_probe_reads_a_file_object_and_leaves_it_at_the_start(tmp_path: Path) -> None:
    path = tmp_path / "a.webm"
    moving_shapes(path, seconds=1, fps=10)
    stream = io.BytesIO(path.read_bytes())
    stream.seek(123)
    assert probe_video(stream, BIG, 60) == probe_video(path, BIG, 60)
    assert stream.tell() == 0


def _wav(path: Path) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0\0" * 8000)


def _gif(path: Path) -> None:
    from PIL import Image

    frames = [Image.new("RGB", (32, 32), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=100)


NOT_VIDEOS = {
    "jpeg": lambda path, assets: path.write_bytes((assets / "bus.jpg").read_bytes()),
    "random": lambda path, _: path.write_bytes(np.random.default_rng(1).bytes(50_000)),
    "empty": lambda path, _: path.write_bytes(b""),
    "gif": lambda path, _: _gif(path),
    "wav-audio-only": lambda path, _: _wav(path),
}


@pytest.mark.parametrize("kind", NOT_VIDEOS)
def test_probe_refuses_what_is_not_a_video(tmp_path: Path, assets: Path, kind: str) -> None:
    path = tmp_path / "upload"
    NOT_VIDEOS[kind](path, assets)
    with pytest.raises(NotAVideo, match="MP4, MOV, MKV, WebM or AVI"):
        probe_video(path, BIG, 60)


@pytest.mark.parametrize(("name", "keep"), [("a.mkv", 200), ("a.mp4", 0.5), ("a.webm", 100)])
def test_probe_refuses_a_truncated_header(tmp_path: Path, name: str, keep: float) -> None:
    whole, cut = tmp_path / name, tmp_path / f"cut-{name}"
    moving_shapes(whole, seconds=2, fps=10)
    if keep < 1:
        truncate(whole, cut, keep)  # MP4 from a plain muxer: its index is at the end
    else:
        cut.write_bytes(whole.read_bytes()[: int(keep)])
    with pytest.raises(NotAVideo):
        probe_video(cut, BIG, 60)


def test_probe_refuses_frames_over_the_pixel_limit(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    moving_shapes(path, seconds=1, fps=10)
    assert probe_video(path, 320 * 240, 60).width == 320
    with pytest.raises(VideoUnprocessable, match=r"320x240 = 76800 pixels; the limit is 76799"):
        probe_video(path, 320 * 240 - 1, 60)


def test_probe_refuses_a_video_over_the_duration_limit(tmp_path: Path) -> None:
    path = tmp_path / "a.mkv"
    moving_shapes(path, seconds=3, fps=10)
    assert probe_video(path, BIG, 3.1).duration == pytest.approx(3)
    with pytest.raises(VideoUnprocessable, match=r"lasts 3\.0 s; the limit is 2\.5 s"):
        probe_video(path, BIG, 2.5)


def test_probe_measures_a_live_recording_that_declares_no_duration(tmp_path: Path) -> None:
    path = tmp_path / "live.webm"
    live_recording(path, seconds=2, fps=10)
    with av.open(str(path)) as container:
        assert container.duration is None, "the test file must declare no duration"
    info = probe_video(path, BIG, 60)
    assert (info.duration, info.frames) == (pytest.approx(2), 20)
    with pytest.raises(VideoUnprocessable, match=r"lasts more than 1\.5 s"):
        probe_video(path, BIG, 1.5)


@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
def test_probe_reports_the_display_rotation_and_the_upright_size(
    tmp_path: Path, degrees: int
) -> None:
    path = tmp_path / "r.mp4"
    rotated(path, degrees, size=(160, 96))
    info = probe_video(path, BIG, 60)
    assert (info.rotation, info.width, info.height) == (degrees, 160, 96)


# --- plan -----------------------------------------------------------------------------


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


# --- sizes and chunks -----------------------------------------------------------------


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
    ranges = chunk_ranges(total, per)
    covered = [i for start, count in ranges for i in range(start, start + count)]
    assert covered == list(range(total))
    assert all(1 <= count <= per for _, count in ranges)
    assert len(ranges) == -(-total // per)


# --- decode ---------------------------------------------------------------------------


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


# --- encode and join ------------------------------------------------------------------


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


# --- damaged files --------------------------------------------------------------------


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


def test_a_truncated_mp4_without_its_index_is_a_decode_error(tmp_path: Path) -> None:
    clean, cut = tmp_path / "a.mp4", tmp_path / "cut.mp4"
    moving_shapes(clean, seconds=2, fps=10)
    truncate(clean, cut, 0.5)
    with pytest.raises(VideoDecodeError, match="cannot be opened"):
        plan_frames(cut)


def test_plan_refuses_a_video_longer_than_its_header_said(tmp_path: Path) -> None:
    from celery_worker.video import VideoDecodeError, plan_frames
    from tests.support.videos import moving_shapes

    path = tmp_path / "long.mkv"
    moving_shapes(path, seconds=2, fps=10)
    assert len(plan_frames(path, max_seconds=5).source_pts) == 20
    with pytest.raises(VideoDecodeError, match="longer than 1 s"):
        plan_frames(path, max_seconds=1)


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
    from celery_worker.video import chunk_ranges_at_keyframes

    pts = [512 * k for k in range(total)]
    keys = frozenset(pts[::key_every])
    ranges = chunk_ranges_at_keyframes(pts, per_chunk, keys)
    assert [start for start, _ in ranges] == starts
    covered = [i for start, count in ranges for i in range(start, start + count)]
    assert covered == list(range(total))
    assert all(1 <= count <= per_chunk for _, count in ranges)


def test_the_plan_names_the_keyframes(tmp_path: Path) -> None:
    from celery_worker.video import plan_frames
    from tests.support.videos import moving_shapes

    path = tmp_path / "k.mp4"
    moving_shapes(path, seconds=3, fps=10, keyint=10)
    plan = plan_frames(path)
    assert sorted(plan.source_pts.index(p) for p in plan.keyframes) == [0, 10, 20]
