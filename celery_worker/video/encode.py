"""Encoding a chunk's frames as an H.264 segment, and joining the segments into one MP4.

Segments have no B-frames and the same settings, so they join by remuxing alone (no
re-encoding); the joined file is faststart, so it plays in a browser while it loads.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from av.video.frame import VideoFrame


def encode_segment(
    path: Path, frames: Iterable[np.ndarray], fps: Fraction, threads: int = 1
) -> int:
    """H.264 MP4 of BGR frames, frame i at i / fps; returns the frames written.

    No B-frames, so every packet's pts equals its dts and the segments of one job
    (same size, same settings, hence the same SPS/PPS) join by remuxing alone.
    """
    images = iter(frames)
    first = next(images, None)
    if first is None:
        raise ValueError("a segment needs at least one frame")
    height, width = first.shape[:2]
    time_base = 1 / Fraction(fps)
    written = 0
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = time_base
        stream.codec_context.max_b_frames = 0
        stream.codec_context.thread_count = threads
        stream.options = {"crf": "20", "preset": "veryfast"}
        for image in _chain(first, images):
            if image.shape != first.shape:
                raise ValueError(f"frame {written} is {image.shape}, the first {first.shape}")
            frame = VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
            frame.pts, frame.time_base = written, time_base
            container.mux(stream.encode(frame))
            written += 1
        container.mux(stream.encode(None))
    return written


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def concat_segments(segments: Sequence[Path], out: Path, fps: Fraction) -> int:
    """Remux the segments, in order, into one MP4 (+faststart); returns the frame count.

    Frame k is stamped at exactly k / fps whatever the segments say. Written to a
    temporary file beside ``out`` and moved over it, so ``out`` is whole or absent.
    """
    if not segments:
        raise ValueError("no segments to join")
    time_base = 1 / Fraction(fps)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}-", suffix=".mp4")
    os.close(fd)
    tmp = Path(name)
    try:
        count = _remux(segments, tmp, time_base)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def _remux(segments: Sequence[Path], tmp: Path, time_base: Fraction) -> int:
    count = 0
    with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as target:
        ostream = None
        extradata = None
        for index, segment in enumerate(segments):
            with av.open(str(segment)) as source:
                istream = source.streams.video[0]
                if ostream is None:
                    ostream = target.add_stream_from_template(istream)
                    ostream.time_base = time_base
                    extradata = istream.codec_context.extradata
                elif istream.codec_context.extradata != extradata:
                    raise ValueError(f"segment {index} was encoded with other settings")
                for packet in source.demux(istream):
                    if packet.size == 0:
                        continue
                    packet.stream = ostream
                    packet.time_base = time_base
                    packet.pts = packet.dts = count
                    packet.duration = 1
                    target.mux(packet)
                    count += 1
    return count


def thumbnail_strip(images: Sequence[np.ndarray], height: int = 96) -> np.ndarray:
    """The images scaled to ``height``, side by side (BGR)."""
    if not images:
        raise ValueError("no images for a thumbnail strip")
    scaled = [
        cv2.resize(
            image,
            (max(1, round(image.shape[1] * height / image.shape[0])), height),
            interpolation=cv2.INTER_AREA,
        )
        for image in images
    ]
    return np.hstack(scaled)
