"""Video uploads as the API probes them (common.videos): containers, limits, rotation.

Every video is generated here by tests/support/videos.py: tiny, near-lossless, with
known content.
"""

from __future__ import annotations

import io
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from common.containers import CONTAINERS
from common.videos import CODECS, STALL_PACKETS, NotAVideo, VideoUnprocessable, probe_video
from tests.support.videos import MemoryPipe, live_recording, moving_shapes, rotated, truncate

BIG = 10**9


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


@pytest.mark.parametrize(
    ("encoder", "codec"),
    [("libvpx", "vp8"), ("libx265", "hevc"), ("mpeg2video", "mpeg2video"), ("libsvtav1", "av1")],
)
def test_probe_accepts_each_listed_codec(tmp_path: Path, encoder: str, codec: str) -> None:
    path = tmp_path / "a.mkv"
    _encode(path, encoder)
    info = probe_video(path, BIG, 60)
    assert info.container == "mkv" and (info.codec, info.width) in {(codec, 64), ("libdav1d", 64)}
    assert codec in CODECS


@pytest.mark.parametrize(
    ("encoder", "codec"), [("ffv1", "ffv1"), ("mpeg1video", "mpeg1video"), ("prores_ks", "prores")]
)
def test_probe_refuses_a_codec_outside_the_list(tmp_path: Path, encoder: str, codec: str) -> None:
    """Codecs FFmpeg decodes well enough, but outside the list: its decoders stay closed."""
    path = tmp_path / "a.mkv"
    _encode(path, encoder)
    with pytest.raises(NotAVideo, match=rf"video codec \({codec}\) is not accepted"):
        probe_video(path, BIG, 60)


def _encode(path: Path, encoder: str, size: tuple[int, int] = (64, 48)) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=25)  # a rate MPEG-1 allows
        stream.width, stream.height = size
        stream.pix_fmt = "yuv422p10le" if encoder == "prores_ks" else "yuv420p"
        for index in range(5):
            image = np.full((size[1], size[0], 3), 40 * index, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


@pytest.mark.parametrize(("frozen", "moving"), [(5000, 0), (STALL_PACKETS + 200, 50)])
def test_probe_refuses_timestamps_that_do_not_advance(
    tmp_path: Path, frozen: int, moving: int
) -> None:
    """No declared duration, and every packet at pts 0: judged as the packets are read,
    so a clock that starts moving after the first thousand packets comes too late."""
    path = tmp_path / "frozen.mkv"
    path.write_bytes(_frozen_mkv(frozen, moving))
    with av.open(str(path)) as container:
        assert container.duration is None, "the test file must declare no duration"
    with pytest.raises(VideoUnprocessable, match="timestamps do not advance"):
        probe_video(path, BIG, 60)


def test_probe_measures_a_clock_that_advances(tmp_path: Path) -> None:
    path = tmp_path / "moving.mkv"
    path.write_bytes(_frozen_mkv(0, 50))
    assert probe_video(path, BIG, 60).duration == pytest.approx(5, abs=0.11)


def _frozen_mkv(frozen: int, moving: int) -> bytes:
    """Tiny MJPEG frames written to a pipe (no duration): ``frozen`` at pts 0, then
    ``moving`` 100 ms apart."""
    out = MemoryPipe()  # not seekable, so the muxer writes no duration
    with av.open(out, "w", format="matroska") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuvj420p"
        stream.time_base = Fraction(1, 1000)
        black = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        picture = bytes(stream.encode(black)[0])
        for index in range(frozen + moving):
            packet = av.Packet(picture)
            packet.stream = stream
            packet.time_base = Fraction(1, 1000)
            packet.pts = packet.dts = max(0, index - frozen + 1) * 100
            container.mux(packet)
    return bytes(out.data)
