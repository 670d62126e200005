"""Broken and pathological videos: MP4s cut short or full of noise, and Matroska files
written by hand whose declarations lie (frame size, timestamps, length)."""

from __future__ import annotations

import random
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.hostile.images import small_jpeg


def small_mp4(faststart: bool = False, frames: int = 30) -> bytes:
    """A 64 x 64 H.264 MP4 of ``frames`` noise frames at 15 fps; the index (moov) first or last.

    Written to a file: FFmpeg's faststart pass reopens its output by name.
    """
    import av
    import numpy as np

    options = {"movflags": "faststart"} if faststart else {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clip.mp4"
        with av.open(str(path), "w", options=options) as container:
            stream = container.add_stream("libx264", rate=15)
            stream.width = stream.height = 64
            stream.pix_fmt = "yuv420p"
            noise = np.random.default_rng(0)  # noise: every frame weighs kilobytes
            for _ in range(frames):
                image = noise.integers(0, 256, (64, 64, 3), np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode(None))
        return path.read_bytes()


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def mp4_garbage(size: int = 1 << 20) -> bytes:
    """An ``ftyp`` box, then ``size`` random bytes (seeded: the same file every run)."""
    ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isomavc1"
    return ftyp + random.Random(20261201).randbytes(size)


def ebml_size(size: int) -> bytes:
    length = 1
    while size >= (1 << (7 * length)) - 1:
        length += 1
    return (size | 1 << (7 * length)).to_bytes(length, "big")


def uint(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def element(ident: int, payload: bytes | Iterable[bytes]) -> bytes:
    body = payload if isinstance(payload, bytes) else b"".join(payload)
    return uint(ident) + ebml_size(len(body)) + body


UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"


@dataclass
class Mkv:
    """A Matroska file of one V_MJPEG track, written by hand: EBML header, a Segment of
    unknown size, Info, Tracks, then the clusters added with ``cluster``."""

    width: int
    height: int
    default_duration_ms: int | None = 40
    clusters: list[bytes] = field(default_factory=list)

    def cluster(self, timecode: int, blocks: Iterable[tuple[int, bytes]] = ()) -> None:
        """A cluster at ``timecode`` ms holding keyframe SimpleBlocks (relative ms, data)."""
        simple = (
            element(0xA3, b"\x81" + struct.pack(">hB", relative, 0x80) + frame)
            for relative, frame in blocks
        )
        self.clusters.append(element(0x1F43B675, [element(0xE7, uint(timecode)), *simple]))

    def bytes(self) -> bytes:
        header = element(
            0x1A45DFA3,
            [
                element(0x4286, uint(1)),  # EBMLVersion
                element(0x42F7, uint(1)),  # EBMLReadVersion
                element(0x42F2, uint(4)),  # EBMLMaxIDLength
                element(0x42F3, uint(8)),  # EBMLMaxSizeLength
                element(0x4282, b"matroska"),  # DocType
                element(0x4287, uint(4)),  # DocTypeVersion
                element(0x4285, uint(2)),  # DocTypeReadVersion
            ],
        )
        info = element(
            0x1549A966,
            [
                element(0x2AD7B1, uint(1_000_000)),
                element(0x4D80, b"hostile"),
                element(0x5741, b"hostile"),
            ],
        )
        video = element(0xE0, [element(0xB0, uint(self.width)), element(0xBA, uint(self.height))])
        entry = [
            element(0xD7, uint(1)),  # TrackNumber
            element(0x73C5, uint(1)),  # TrackUID
            element(0x83, uint(1)),  # TrackType: video
            element(0x86, b"V_MJPEG"),  # CodecID
        ]
        if self.default_duration_ms:
            entry.append(element(0x23E383, uint(self.default_duration_ms * 1_000_000)))
        tracks = element(0x1654AE6B, element(0xAE, [*entry, video]))
        return b"".join([header, uint(0x18538067), UNKNOWN_SIZE, info, tracks, *self.clusters])


def mkv_declaring(width: int, height: int, frames: int = 10) -> bytes:
    """64 x 64 MJPEG frames, 40 ms apart, in a track whose Video says ``width`` x ``height``."""
    mkv = Mkv(width, height)
    mkv.cluster(0, [(40 * k, small_jpeg()) for k in range(frames)])
    return mkv.bytes()


def mkv_frozen(frames: int = 5000) -> bytes:
    """``frames`` MJPEG frames whose timestamps never advance (every block at 0 ms)."""
    mkv = Mkv(64, 64, default_duration_ms=None)
    frame = small_jpeg()
    for start in range(0, frames, 1000):
        mkv.cluster(0, [(0, frame)] * min(1000, frames - start))
    return mkv.bytes()


# An empty cluster of fixed width: Cluster (size 6), Timecode (size 4, the value).
EMPTY_CLUSTER = struct.Struct(">IBBBI")


def mkv_million_clusters(count: int = 1_000_000, every: int = 1000) -> bytes:
    """``count`` clusters 40 ms apart (11 hours by their timecodes), a frame in one of
    each ``every``, the rest empty (11 bytes each): no Duration, so its length is read."""
    mkv = Mkv(64, 64)
    frame = small_jpeg()
    for index in range(count):
        if index % every:
            mkv.clusters.append(EMPTY_CLUSTER.pack(0x1F43B675, 0x86, 0xE7, 0x84, 40 * index))
        else:
            mkv.cluster(40 * index, [(0, frame)])
    return mkv.bytes()
