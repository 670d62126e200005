"""Decoding one chunk of a video: the planned frames, BGR, upright, at the output size.

Seeks to the keyframe before the chunk and decodes forward, so a chunk gives the
same frames as decoding the whole file. Frames that cannot be decoded are named
(``DecodedChunk.missing``), never raised; a frame over the pixel limit is raised
(``FrameTooLarge``) before it is converted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import av.error
import cv2
import numpy as np
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from celery_worker.video.demux import check_frame, limit_frames, open_video, packets

# Packets read past the last wanted timestamp before a chunk stops waiting for frames
# the decoder will never give (a damaged stream); more than any real reorder delay.
MAX_PACKETS_PAST = 64
ROTATIONS = {
    90: cv2.ROTATE_90_CLOCKWISE,
    180: cv2.ROTATE_180,
    270: cv2.ROTATE_90_COUNTERCLOCKWISE,
}


@dataclass
class DecodedChunk:
    frames: np.ndarray  # (n, H, W, 3) uint8 BGR, upright, at the requested size
    missing: list[int]  # positions whose frame could not be decoded (filled in)
    damaged: list[int]  # positions FFmpeg decoded but flagged corrupt


def decode_chunk(
    path: Path,
    source_pts: Sequence[int],
    rotation: int,
    size: tuple[int, int],
    max_pixels: int | None = None,
) -> DecodedChunk:
    """The frames with these pts (a slice of ``FramePlan.source_pts``), BGR, upright.

    Seeks to the keyframe before the first pts and decodes forward, so the result is
    the same frame for frame as decoding the whole file. A frame that cannot be
    decoded is replaced by the previous decoded one of the chunk (else black) and
    named in ``missing``; corrupt packets are skipped, never raised. Only a file that
    cannot be opened at all raises (``VideoDecodeError``, or ``FileNotFoundError``),
    and, given ``max_pixels`` (``settings.max_image_pixels``), a wanted frame over it
    (``FrameTooLarge``, a ``VideoDecodeError``), before it is converted.
    """
    width, height = size
    if not source_pts:
        return DecodedChunk(np.zeros((0, height, width, 3), np.uint8), [], [])
    wanted = set(source_pts)
    got: dict[int, np.ndarray] = {}
    corrupt: set[int] = set()

    def keep(frame: VideoFrame, pts: int) -> None:
        if max_pixels is not None:
            check_frame(frame.width, frame.height, max_pixels)
        got[pts] = _to_bgr(frame, rotation, size)
        if frame.is_corrupt:
            corrupt.add(pts)

    first, last = min(wanted), max(wanted)
    with open_video(path) as container:
        stream = container.streams.video[0]
        _prepare(stream, max_pixels)
        try:
            container.seek(first, stream=stream, backward=True)
            landed = _decode_range(container, stream, wanted, last, keep, after_seek=True)
        except av.error.FFmpegError:
            landed = None
    if landed is None or landed > first:  # the seek overshot or failed: from the start
        got.clear()
        corrupt.clear()
        with open_video(path) as container:
            stream = container.streams.video[0]
            _prepare(stream, max_pixels)
            _decode_range(container, stream, wanted, last, keep, after_seek=False)
    return _assemble(source_pts, got, corrupt, size)


def _decode_range(
    container: InputContainer,
    stream: VideoStream,
    wanted: set[int],
    last: int,
    keep: Callable[[VideoFrame, int], None],
    after_seek: bool,
) -> int | None:
    """Decode from the current position until past ``last``; pts of the first frame out.

    After a seek, stops at once when the first frame out is already past the first
    wanted one: the caller starts over from the beginning of the file.
    """
    first_out: int | None = None
    past = 0
    warnings: list[str] = []
    for packet in packets(container, stream, warnings):
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            continue  # a corrupt packet: its frame is missing, the next keyframe recovers
        for frame in frames:
            pts = frame.pts if frame.pts is not None else frame.dts
            if not isinstance(frame, VideoFrame) or pts is None:
                continue
            if first_out is None:
                first_out = pts
                if after_seek and pts > min(wanted):
                    return first_out  # the caller decides whether to start over
            if pts in wanted:
                keep(frame, pts)
            if pts > last:
                return first_out
        stamp = packet.dts if packet.dts is not None else packet.pts
        if stamp is not None and stamp > last:
            past += 1
            if past > MAX_PACKETS_PAST:
                break
    return first_out


def _to_bgr(frame: VideoFrame, rotation: int, size: tuple[int, int]) -> np.ndarray:
    image: np.ndarray = frame.to_ndarray(format="bgr24")
    if rotation % 360:
        image = cv2.rotate(image, ROTATIONS[rotation % 360])
    if (image.shape[1], image.shape[0]) != size:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def _assemble(
    source_pts: Sequence[int],
    got: dict[int, np.ndarray],
    corrupt: set[int],
    size: tuple[int, int],
) -> DecodedChunk:
    width, height = size
    frames = np.zeros((len(source_pts), height, width, 3), np.uint8)
    missing: list[int] = []
    damaged: list[int] = []
    for position, pts in enumerate(source_pts):
        image = got.get(pts)
        if image is not None:
            frames[position] = image
            if pts in corrupt:
                damaged.append(position)
        else:
            missing.append(position)
            if position:
                frames[position] = frames[position - 1]
    return DecodedChunk(frames, missing, damaged)


def _prepare(stream: VideoStream, max_pixels: int | None) -> None:
    """Decode on one thread: a worker process is the unit of parallelism, and FFmpeg's
    threads would compete with the model's for the same cores (the service runs the
    decoding beside inference). Frames past ``max_pixels`` are refused (``limit_frames``)."""
    stream.thread_type = "SLICE"
    stream.codec_context.thread_count = 1
    if max_pixels is not None:
        limit_frames(stream, max_pixels)
