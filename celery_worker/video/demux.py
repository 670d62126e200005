"""Opening a video and reading its packets, the way planning and decoding both do.

Damaged input never raises here past "cannot be opened": demux errors are noted and
reading goes on from the next readable packet. Frames over the pixel limit do raise
(``FrameTooLarge``): the API probed only the first one, and a stream may grow later.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import av.error
from av.container import InputContainer
from av.packet import Packet
from av.video.stream import VideoStream

from common.videos import guard_decoder

# Demux errors tolerated in one pass before the rest of the file is given up.
MAX_DEMUX_ERRORS = 32


class VideoDecodeError(ValueError):
    """The file holds no video packet that can be read: there is nothing to process."""


class FrameTooLarge(VideoDecodeError):
    """A frame (or the stream's declared size) is over the pixel limit."""


def limit_frames(stream: VideoStream, max_pixels: int) -> None:
    """Refuse a stream declaring frames over ``max_pixels`` (``FrameTooLarge``), and tell
    its decoder to refuse pictures far past it (``common.videos.guard_decoder``): a frame
    over that bound is undecodable, named missing like a damaged one, never allocated.

    Call before the first packet is decoded; each decoded frame is checked again with
    ``check_frame``, since a stream may change size part way.
    """
    codec = stream.codec_context
    check_frame(codec.width or 0, codec.height or 0, max_pixels, "declares")
    guard_decoder(stream, max_pixels)


def check_frame(width: int, height: int, max_pixels: int, verb: str = "has") -> None:
    """``FrameTooLarge`` when a ``width`` x ``height`` frame is over ``max_pixels``."""
    if width * height > max_pixels:
        raise FrameTooLarge(
            f"the video {verb} frames of {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels} (CV_MAX_IMAGE_PIXELS)"
        )


def open_video(path: Path) -> InputContainer:
    """The file opened for reading; ``VideoDecodeError`` unless it is merely missing."""
    try:
        return av.open(str(path), "r", metadata_errors="replace")
    except av.error.FileNotFoundError:
        raise
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"the video cannot be opened: {reason(exc)}") from exc


def packets(
    container: InputContainer, stream: VideoStream, warnings: list[str]
) -> Iterator[Packet[VideoStream]]:
    """The stream's packets (the final empty flush packet too); demux errors are noted.

    After an error FFmpeg resynchronises at the next readable packet, so demuxing goes
    on; past ``MAX_DEMUX_ERRORS`` the rest of the file is given up.
    """
    errors = 0
    while True:
        try:
            yield from container.demux(stream)
            return
        except av.error.FFmpegError as exc:
            errors += 1
            if errors == 1 or errors == MAX_DEMUX_ERRORS:
                warnings.append(f"demux error: {reason(exc)}")
            if errors >= MAX_DEMUX_ERRORS:
                warnings.append(f"gave up reading the file after {errors} demux errors")
                return


def reason(exc: BaseException) -> str:
    """FFmpeg's message without the file name it quotes."""
    if isinstance(exc, av.error.FFmpegError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__
