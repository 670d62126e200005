"""Checks a file is a video we can process: its header and first frame only (API and workers).

The analogue of ``common.images``: an upload is probed before it is stored, so a file
the workers could not decode, or one too large per frame or too long, is refused with a
clear reason while the client is still connected. Only the header is parsed and one
frame decoded, so a 2 GB file is checked in milliseconds.

The API never calls ``probe_video`` itself: it checks the leading bytes
(``common.containers.sniff_container``) and runs the probe in a child process under
limits (``common.probe``). What is accepted, narrowest first:

1. the file starts like an MP4/MOV, Matroska/WebM or AVI file (``common.containers``),
   and only that container's FFmpeg demuxer opens it: no other demuxer ever sees an upload;
2. its first video stream is in one of the ``CODECS`` the workers decode;
3. its frames, duration and frame count are within the limits.

This module is imported by the light API process: stdlib and PyAV only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from common.containers import (
    ACCEPTED,
    CONTAINERS,
    ISO_BMFF,
    STILL_IMAGE_BRANDS,
    Source,
    container_name,
    read_head,
    sniff_container,
)

__all__ = [
    "CODECS",
    "NotAVideo",
    "VideoInfo",
    "VideoRejected",
    "VideoUnprocessable",
    "guard_decoder",
    "probe_video",
]


class VideoRejected(ValueError):
    """The file cannot be processed as a video; ``str()`` says why, for the client."""


class NotAVideo(VideoRejected):
    """Not a video, or not one the workers can decode (HTTP 415)."""


class VideoUnprocessable(VideoRejected):
    """A video, but too large per frame, too long, or without frames (HTTP 422)."""


# The video codecs accepted, by FFmpeg's codec name (whichever decoder implements it:
# AV1 is decoded by libdav1d): what cameras, phones and browsers record.
CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg", "mpeg2video"})
ACCEPTED_CODECS = "H.264, HEVC, VP8, VP9, AV1, MPEG-4 Part 2, Motion JPEG or MPEG-2"

# Decoders are told to refuse pictures over this many times the pixel limit (FFmpeg's
# "max_pixels"), so a stream that grows mid-way never makes them allocate more. Not the
# limit itself: FFmpeg counts some decoders' padded buffers (MPEG-4 Part 2 at 320x240
# asks for 125,440 pixels), and the frames between are refused with their size instead.
DECODER_HEADROOM = 2

# A stream that yields no picture within this many packets is not one we can decode;
# the bound keeps a garbage stream from being read to its end.
PROBE_PACKETS = 300
# A video that does not declare its duration is measured by reading its packets. No real
# video holds more than this many video packets per second of its timeline (240 fps slow
# motion is the fastest common rate); beyond it, after the first STALL_PACKETS, the
# timestamps are judged not to advance, and reading stops: a file whose packets all carry
# one timestamp is never read to its end.
MAX_PACKET_RATE = 300
STALL_PACKETS = 1000


@dataclass(frozen=True)
class VideoInfo:
    container: str  # a key of CONTAINERS
    content_type: str
    extension: str
    codec: str  # FFmpeg's decoder name: "h264", "vp9", "mpeg4", ...
    width: int  # as displayed, i.e. after rotation
    height: int
    rotation: int  # degrees clockwise the decoded frames must turn to stand upright
    fps: float  # average frame rate
    frame_rate: str  # the same, exact: "30000/1001"
    duration: float  # seconds
    frames: int  # declared frame count, else round(duration * fps)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe fields, as stored with the job and passed to the workers."""
        return asdict(self)


def probe_video(source: Source, max_pixels: int, max_seconds: float) -> VideoInfo:
    """The video's container, codec, size, rate and length; raises ``VideoRejected``.

    ``source`` is a path or a seekable binary file object (left at its start). One
    frame is decoded to prove the stream decodes. A missing path raises
    ``FileNotFoundError`` (a storage fault, not the client's).

    This parses the file with FFmpeg in the calling process: the API runs it in a child
    process under limits (``common.probe.probe_untrusted``), never in its own.
    """
    if not isinstance(source, str | Path):
        source.seek(0)
    try:
        head = read_head(source)
        demuxer = sniff_container(head)
        if demuxer is None:
            raise NotAVideo(f"the file does not start like a video; send {ACCEPTED}")
        target = str(source) if isinstance(source, Path) else source
        with av.open(target, "r", format=demuxer, metadata_errors="replace") as container:
            return _inspect(container, demuxer, head, max_pixels, max_seconds)
    except av.error.FileNotFoundError:
        raise
    except av.error.FFmpegError as exc:
        raise NotAVideo(
            f"the file is not a video the service can read ({_reason(exc)}); send {ACCEPTED}"
        ) from exc
    finally:
        if not isinstance(source, str | Path):
            source.seek(0)


def guard_decoder(stream: VideoStream, max_pixels: int) -> None:
    """Tell the stream's decoder to refuse pictures past ``DECODER_HEADROOM`` times
    ``max_pixels`` (before it is opened, i.e. before the first packet is decoded)."""
    stream.codec_context.options = {
        **stream.codec_context.options,
        "max_pixels": str(DECODER_HEADROOM * max_pixels),
    }


def _reason(exc: BaseException) -> str:
    """FFmpeg's message without the file name it quotes (a temporary path)."""
    if isinstance(exc, av.error.FFmpegError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__


def _inspect(
    container: InputContainer, demuxer: str, head: bytes, max_pixels: int, max_seconds: float
) -> VideoInfo:
    name = _container_name(container, demuxer, head)
    if not container.streams.video:
        raise NotAVideo(f"the {name} file holds no video stream; send {ACCEPTED}")
    stream = container.streams.video[0]
    codec = stream.codec_context
    if codec is None or not codec.name:
        raise NotAVideo(f"the {name} file's video codec cannot be decoded; send {ACCEPTED}")
    if codec.codec.canonical_name not in CODECS:
        raise NotAVideo(
            f"the {name} file's video codec ({codec.codec.canonical_name}) is not accepted; "
            f"send {ACCEPTED} with {ACCEPTED_CODECS} video"
        )
    coded = (codec.width or 0) * (codec.height or 0)
    if coded > max_pixels:  # before decoding: a declared 30000x30000 frame is never allocated
        raise VideoUnprocessable(
            f"video frames are {codec.width}x{codec.height} = {coded} pixels; "
            f"the limit is {max_pixels}"
        )
    guard_decoder(stream, max_pixels)
    frame = _first_frame(container, stream)
    width, height = frame.width, frame.height
    if width * height > max_pixels:
        raise VideoUnprocessable(
            f"video frames are {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels}"
        )
    rotation = clockwise_rotation(frame.rotation)
    if rotation in (90, 270):
        width, height = height, width
    rate = _average_rate(stream)
    duration = _duration(container, stream)
    if duration is None:
        duration = _measured_duration(container, stream, frame.pts, rate, max_seconds)
    if duration > max_seconds:
        raise VideoUnprocessable(f"the video lasts {duration:.1f} s; the limit is {max_seconds} s")
    frames = int(stream.frames or 0) or round(duration * rate)
    if frames <= 0:
        raise VideoUnprocessable("the video holds no frames")
    content_type, extension = CONTAINERS[name]
    return VideoInfo(
        container=name,
        content_type=content_type,
        extension=extension,
        codec=codec.name,
        width=width,
        height=height,
        rotation=rotation,
        fps=float(rate),
        frame_rate=f"{rate.numerator}/{rate.denominator}",
        duration=duration,
        frames=frames,
    )


def _container_name(container: InputContainer, demuxer: str, head: bytes) -> str:
    """Our name (a key of ``CONTAINERS``) of a file opened with ``demuxer``; HEIF/AVIF
    still images, which the mov demuxer also opens, are refused by their ftyp brand."""
    brand = container.metadata.get("major_brand", "").strip() if demuxer == ISO_BMFF else ""
    if brand in STILL_IMAGE_BRANDS:
        raise NotAVideo(f"HEIF/AVIF images ({brand}) are not accepted; send {ACCEPTED}")
    return container_name(demuxer, head, brand)


def _first_frame(container: InputContainer, stream: VideoStream) -> VideoFrame:
    """Decode until one picture comes out, within ``PROBE_PACKETS`` packets."""
    stream.thread_type = "SLICE"  # frame threading would hold the first picture back
    stream.codec_context.thread_count = 1  # one picture: threads would only cost memory
    errors: list[str] = []
    for count, packet in enumerate(container.demux(stream), start=1):
        try:
            for frame in packet.decode():
                if isinstance(frame, VideoFrame):
                    return frame
        except av.error.FFmpegError as exc:
            errors.append(_reason(exc))
        if count >= PROBE_PACKETS:
            break
    detail = f": {errors[-1]}" if errors else ""
    raise NotAVideo(f"the video stream holds no decodable frame{detail}; send {ACCEPTED}")


def clockwise_rotation(counter_clockwise: float) -> int:
    """FFmpeg's display-matrix angle (counter-clockwise, -180..180) as 0/90/180/270 clockwise."""
    return (-round(counter_clockwise / 90) * 90) % 360


def _average_rate(stream: VideoStream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and rate > 0:
            return Fraction(rate.numerator, rate.denominator)
    raise VideoUnprocessable("the video declares no frame rate")


def _measured_duration(
    container: InputContainer,
    stream: VideoStream,
    start: int | None,
    rate: Fraction,
    max_seconds: float,
) -> float:
    """The length of a video that does not declare it (a live recording, e.g. a browser's
    MediaRecorder WebM): its packets are read (not decoded) to the end, or only until
    they pass ``max_seconds``. ``start`` is the first frame's pts (its packet is read).

    Timestamps that do not advance (more than ``MAX_PACKET_RATE`` packets per second of
    timeline, past the first ``STALL_PACKETS``) make the video unprocessable: there is no
    declared duration to fall back on, and reading on could take the whole file.
    """
    time_base = Fraction(stream.time_base or Fraction(1, 1000))
    first, last = start, start
    try:
        for count, packet in enumerate(container.demux(stream), start=1):
            if packet.pts is not None:
                first = packet.pts if first is None else min(first, packet.pts)
                last = packet.pts if last is None else max(last, packet.pts)
            span = (last - first) * time_base if first is not None and last is not None else 0
            if span > max_seconds:
                raise VideoUnprocessable(
                    f"the video lasts more than {max_seconds} s; the limit is {max_seconds} s"
                )
            if count > STALL_PACKETS + MAX_PACKET_RATE * span:
                raise VideoUnprocessable(
                    "the video's timestamps do not advance, so its duration cannot be measured"
                )
    except av.error.FFmpegError:
        pass  # damaged further on: the workers name what they lose; judge what was read
    if first is None or last is None:
        raise VideoUnprocessable("the video declares no duration and none could be measured")
    return float((last - first) * time_base + 1 / rate)  # the last frame lasts one frame


def _duration(container: InputContainer, stream: VideoStream) -> float | None:
    if stream.duration and stream.duration > 0 and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and container.duration > 0:
        return container.duration / av.time_base
    return None
