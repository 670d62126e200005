"""Test videos, generated on the fly (no binaries in git): tiny, deterministic, with truth.

Each generator writes a file whose codec and container follow the suffix
(.mp4/.mov/.mkv: H.264, .webm: VP9, .avi: MPEG-4 Part 2; ``.mjpeg.avi``: Motion JPEG) and
returns what a test needs to check a result against: the boxes of what moves, or
the upright picture.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from celery_worker.samples import Box, background, write_video
from celery_worker.video.chunks import chunk_ranges_at_keyframes
from celery_worker.video.decode import DecodedChunk, decode_chunk


def moving_shapes(
    path: Path,
    seconds: float,
    fps: float | Fraction,
    size: tuple[int, int] = (320, 240),
    keyint: int | None = None,
) -> list[Box]:
    """A solid rectangle crossing a textured background at constant speed; its box per frame."""
    width, height = size
    count = round(seconds * Fraction(fps))
    side_w, side_h = max(4, width // 6), max(4, height // 4)
    scene = background(size)
    boxes: list[Box] = []
    images = []
    for k in range(count):
        x = round((width - side_w) * k / max(1, count - 1))
        y = (height - side_h) // 3
        image = scene.copy()
        cv2.rectangle(image, (x, y), (x + side_w - 1, y + side_h - 1), (30, 40, 220), -1)
        boxes.append((x, y, x + side_w, y + side_h))
        images.append(image)
    write_video(path, images, fps, keyint=keyint)
    return boxes


def variable_rate(
    path: Path, gaps_ms: Sequence[int], size: tuple[int, int] = (160, 120)
) -> list[float]:
    """A video whose frames are ``gaps_ms`` apart (one more frame than gaps); their times.

    Frame i shows a bar at column 4 * i, so a test can tell which source frame it sees.
    """
    times = [0.0]
    for gap in gaps_ms:
        times.append(times[-1] + gap / 1000)
    images = [_bar_frame(i, size) for i in range(len(times))]
    write_video(path, images, 1000, pts=[round(t * 1000) for t in times], time_base=1000)
    return times


def rotated(
    path: Path,
    degrees: int,
    seconds: float = 0.5,
    fps: float = 10,
    size: tuple[int, int] = (160, 96),
) -> np.ndarray:
    """A video that displays ``size`` upright, stored turned; returns the upright picture.

    The frames are stored turned ``degrees`` counter-clockwise, with a display matrix
    asking players to turn them ``degrees`` clockwise. The picture has a red square
    at its top left and a green one at its bottom right.
    """
    width, height = size
    upright = background(size, seed=2)
    upright[4:28, 4:28] = (0, 0, 255)
    upright[height - 28 : height - 4, width - 28 : width - 4] = (0, 255, 0)
    turn = {0: None, 90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180}
    turn[270] = cv2.ROTATE_90_CLOCKWISE
    code = turn[degrees % 360]
    stored = upright if code is None else cv2.rotate(upright, code)
    write_video(path, [stored] * round(seconds * fps), fps, rotation=degrees)
    return upright


class MemoryPipe(io.RawIOBase):
    """A write-only stream that keeps what it is given: a pipe PyAV cannot seek back in."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk: Any) -> int:
        self.data += chunk
        return len(chunk)


def live_recording(path: Path, seconds: float, fps: int) -> None:
    """A WebM written to a pipe, as a browser's MediaRecorder makes it: no duration, no index.

    Frame i shows a bar at column 4 * i.
    """

    pipe = MemoryPipe()
    with av.open(pipe, "w", format="webm") as container:
        stream = container.add_stream("libvpx-vp9", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for index in range(round(seconds * fps)):
            image = _bar_frame(index, (160, 120))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode(None))
    path.write_bytes(bytes(pipe.data))


def corrupt_middle(src: Path, dst: Path, fraction: float = 0.1, seed: int = 7) -> None:
    """A copy of ``src`` with random bytes over ``fraction`` of it, centred in the middle."""
    data = bytearray(src.read_bytes())
    length = max(1, int(len(data) * fraction))
    start = (len(data) - length) // 2
    data[start : start + length] = np.random.default_rng(seed).bytes(length)
    dst.write_bytes(bytes(data))


def truncate(src: Path, dst: Path, fraction: float) -> None:
    """The first ``fraction`` of ``src``'s bytes, as a download cut short would leave."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])


def _bar_frame(index: int, size: tuple[int, int]) -> np.ndarray:
    width = size[0]
    image = background(size, seed=3)
    x = (4 * index) % (width - 4)
    image[:, x : x + 4] = (255, 255, 255)
    return image


# --- reading back what the service wrote ---------------------------------------------


def chunk_ranges(total: int, per_chunk: int) -> list[tuple[int, int]]:
    """``(start, count)`` of fixed-size chunks, as the service cuts a video without keyframes."""
    return chunk_ranges_at_keyframes(list(range(total)), per_chunk, frozenset())


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
