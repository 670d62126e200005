"""Test videos, generated on the fly (no binaries in git): tiny, deterministic, with truth.

Each generator writes a file whose codec and container follow the suffix
(.mp4/.mov/.mkv: H.264, .webm: VP9, .avi: MPEG-4 Part 2; ``.mjpeg.avi``: Motion JPEG) and
returns what a test needs to check a result against: the boxes of what moves, or
the upright picture.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

Box = tuple[int, int, int, int]

# The face of the man on the right of ultralytics' zidane.jpg (1280x720), with a margin
# of about 10 px around MTCNN's box (909, 97, 1048, 285), scaled by FACE_SCALE.
# Checked once with facenet_pytorch.MTCNN(keep_all=True): pasted alone on the
# backgrounds below, at 480x270 and 1280x720, it is found at p > 0.9999 with an IoU
# of 0.6-0.8 with the crop's box.
FACE_BOX_IN_ZIDANE = (900, 85, 1057, 297)
FACE_SCALE = 0.6


def face_crop(assets: Path) -> np.ndarray:
    """One real face (BGR, 94x127) cut from zidane.jpg; ``assets`` is the fixture's folder."""
    photo = cv2.imread(str(assets / "zidane.jpg"))
    assert photo is not None, f"zidane.jpg is missing from {assets}"
    x1, y1, x2, y2 = FACE_BOX_IN_ZIDANE
    face = photo[y1:y2, x1:x2]
    return cv2.resize(face, None, fx=FACE_SCALE, fy=FACE_SCALE, interpolation=cv2.INTER_AREA)


def background(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth, textured BGR picture: every region is distinct, and codecs keep it well."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    noise = cv2.resize(
        rng.uniform(0, 1, (height // 16 + 2, width // 16 + 2)).astype(np.float32),
        (width, height),
        interpolation=cv2.INTER_CUBIC,
    )
    blue = 110 + 50 * np.sin(x / 11.0) * np.cos(y / 17.0)
    green = 120 + 60 * noise
    red = 90 + 40 * np.cos((x + 2 * y) / 23.0)
    return np.clip(np.dstack([blue, green, red]), 0, 255).astype(np.uint8)


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


def sliding_face(
    path: Path,
    face: np.ndarray,
    seconds: float,
    fps: float,
    size: tuple[int, int] = (480, 270),
) -> list[Box | None]:
    """``face`` (BGR) sliding left to right, entering and leaving; its box per frame.

    The box is where the whole ``face`` image lies (partly outside the frame while it
    enters and leaves), or None while none of it is visible.
    """
    width, height = size
    face_h, face_w = face.shape[:2]
    count = round(seconds * fps)
    scene = background(size, seed=1)
    y = (height - face_h) // 2
    boxes: list[Box | None] = []
    images = []
    for k in range(count):
        # From a quarter outside on the left to a quarter outside on the right.
        x = round(-face_w // 4 + (width - face_w // 2) * k / max(1, count - 1))
        image = scene.copy()
        left, right = max(x, 0), min(x + face_w, width)
        if right > left:
            image[y : y + face_h, left:right] = face[:, left - x : right - x]
            boxes.append((x, y, x + face_w, y + face_h))
        else:
            boxes.append(None)
        images.append(image)
    write_video(path, images, fps)
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


def live_recording(path: Path, seconds: float, fps: int) -> None:
    """A WebM written to a pipe, as a browser's MediaRecorder makes it: no duration, no index.

    Frame i shows a bar at column 4 * i.
    """

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, chunk: Any) -> int:
            self.data += chunk
            return len(chunk)

    pipe = Pipe()
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


def write_video(
    path: Path,
    images: Iterable[np.ndarray],
    fps: float | Fraction,
    *,
    keyint: int | None = None,
    pts: Sequence[int] | None = None,
    time_base: int | None = None,
    rotation: int = 0,
) -> None:
    """BGR images into ``path``; codec by suffix, near-lossless so pixels can be compared.

    ``pts`` (in 1/``time_base`` s) gives irregular timestamps; ``rotation`` (clockwise
    degrees) is written as the display matrix.
    """
    frames = list(images)
    height, width = frames[0].shape[:2]
    codec, options, pix_fmt = _codec_for(path)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.gop_size = keyint or max(1, round(fps))
        if time_base:
            stream.time_base = Fraction(1, time_base)
        stream.options = options
        if rotation:
            stream.set_display_rotation(-rotation)
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
            if pts is not None:
                frame.pts, frame.time_base = pts[index], Fraction(1, time_base or 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


# FFmpeg's "-q:v 2": a fixed quantiser, near-lossless for MPEG-4 Part 2 and Motion JPEG.
QSCALE_2 = {"flags": "+qscale", "global_quality": str(2 * 118)}


def _codec_for(path: Path) -> tuple[str, dict[str, str], str]:
    suffix = path.suffix.lower()
    if suffix in (".mp4", ".mov", ".mkv"):
        return "libx264", {"crf": "8", "preset": "veryfast"}, "yuv420p"
    if suffix == ".webm":
        options = {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "0"}
        return "libvpx-vp9", options, "yuv420p"
    if suffix == ".avi" and path.name.lower().endswith(".mjpeg.avi"):
        return "mjpeg", QSCALE_2, "yuvj420p"
    if suffix == ".avi":
        return "mpeg4", QSCALE_2, "yuv420p"
    raise ValueError(f"no test codec for {path.name}")


def _bar_frame(index: int, size: tuple[int, int]) -> np.ndarray:
    width = size[0]
    image = background(size, seed=3)
    x = (4 * index) % (width - 4)
    image[:, x : x + 4] = (255, 255, 255)
    return image
