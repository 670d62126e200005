"""Sample media for the demo, the benchmarks and the tests (no binaries in the repository).

Real photos come inside the Ultralytics wheel (``bus.jpg``, ``zidane.jpg``); the
sample video is made here: a real face, cut from ``zidane.jpg``, sliding across a
textured background, so face blurring has something true to find.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from av.video.stream import VideoStream

Box = tuple[int, int, int, int]

# The face of the man on the right of ultralytics' zidane.jpg (1280x720), with a margin
# of about 10 px around MTCNN's box (909, 97, 1048, 285), scaled by FACE_SCALE.
# Checked once with facenet_pytorch.MTCNN(keep_all=True): pasted alone on the
# backgrounds below, at 480x270 and 1280x720, it is found at p > 0.9999 with an IoU
# of 0.6-0.8 with the crop's box.
FACE_BOX_IN_ZIDANE = (900, 85, 1057, 297)
FACE_SCALE = 0.6


def ultralytics_assets() -> Path:
    """The folder of the photos inside the ultralytics wheel (found without importing it)."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ultralytics is not installed here; run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "assets"


def face_crop(assets: Path) -> np.ndarray:
    """One real face (BGR, 94x127) cut from zidane.jpg in ``assets`` (``ultralytics_assets()``)."""
    photo = cv2.imread(str(assets / "zidane.jpg"))
    if photo is None:
        raise FileNotFoundError(f"zidane.jpg is missing from {assets}")
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
    picture: np.ndarray = np.clip(np.dstack([blue, green, red]), 0, 255).astype(np.uint8)
    return picture


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
        assert isinstance(stream, VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.gop_size = keyint or max(1, round(fps))
        if time_base:
            stream.time_base = Fraction(1, time_base)
        stream.options = dict(options)
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
    raise ValueError(f"no sample codec for {path.name}")
