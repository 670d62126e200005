"""Video I/O for the workers: plan the frames, decode a chunk, encode and join segments.

A job's video flows through here as: ``plan_frames`` (demux only: which source frame
each output frame shows, at a constant rate) -> ``chunk_ranges`` -> per chunk
``decode_chunk`` (seek, decode, BGR, upright, resized) -> the model and the renderer ->
``encode_segment`` (H.264 without B-frames) -> ``concat_segments`` (remux, no
re-encoding) into the MP4 the client downloads.

Damaged input never raises past ``plan_frames``' "no frame at all": what can be read is
kept, and what was lost is named (``FramePlan.warnings``, ``DecodedChunk.missing``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import av
import av.error
import cv2
import numpy as np
from av.container import InputContainer
from av.packet import Packet
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from common.videos import clockwise_rotation

__all__ = [
    "DecodedChunk",
    "FramePlan",
    "VideoDecodeError",
    "chunk_frames_for",
    "chunk_ranges",
    "clockwise_rotation",
    "concat_segments",
    "decode_chunk",
    "encode_segment",
    "output_size",
    "plan_frames",
    "thumbnail_strip",
]

# Demux errors tolerated in one pass before the rest of the file is given up.
MAX_DEMUX_ERRORS = 32
# Packets read past the last wanted timestamp before a chunk stops waiting for frames
# the decoder will never give (a damaged stream); more than any real reorder delay.
MAX_PACKETS_PAST = 64
# A requested rate this close below the source's counts as the source's (29.97 vs
# 30000/1001), so asking for "the same rate" never drops one frame in a thousand.
RATE_TOLERANCE = Fraction(1, 10_000)
# A stretch without frames longer than both of these is reported as lost data.
GAP_FRAMES = 5
GAP_SECONDS = Fraction(1, 2)
ROTATIONS = {
    90: cv2.ROTATE_90_CLOCKWISE,
    180: cv2.ROTATE_180,
    270: cv2.ROTATE_90_COUNTERCLOCKWISE,
}


class VideoDecodeError(ValueError):
    """The file holds no video packet that can be read: there is nothing to process."""


# --- planning -------------------------------------------------------------------------


@dataclass(frozen=True)
class FramePlan:
    """Which source frame each output frame shows; output frame k is at ``k / fps``."""

    fps: Fraction
    source_pts: list[int]  # per output frame: pts (in time_base) of the source frame shown
    source_times: list[float]  # the same, in seconds from the first source frame
    time_base: Fraction
    declared_frames: int  # what the container declares (0 if unknown)
    found_frames: int  # video packets actually demuxed
    warnings: list[str] = field(default_factory=list)
    keyframes: frozenset[int] = frozenset()  # pts of the packets that are keyframes


def plan_frames(
    path: Path, fps: float | None = None, max_seconds: float | None = None
) -> FramePlan:
    """Normalise the video to a constant rate ``fps`` (None: the source's), by timestamps.

    Demux only, so an hour of video plans in seconds. Output frame k shows the source
    frame nearest to k / fps (ties: the earlier), so a variable-rate source gets
    repeats and drops; a rate above the source's is clamped to it (never invents
    frames). Raises ``VideoDecodeError`` when no video packet can be read, or when
    the packets run past ``max_seconds`` (a header may understate the duration).
    """
    with _open(path) as container:
        if not container.streams.video:
            raise VideoDecodeError("the file holds no video stream")
        stream = container.streams.video[0]
        warnings: list[str] = []
        limit = None
        if max_seconds is not None and stream.time_base:
            limit = int(max_seconds / float(stream.time_base))
        keys: set[int] = set()
        found = _timestamps(container, stream, warnings, limit, keys)
        declared = int(stream.frames or 0)
        declared_seconds = _declared_seconds(container, stream)
    if not found:
        detail = f" ({warnings[-1]})" if warnings else ""
        raise VideoDecodeError(f"no video frame could be read from the file{detail}")
    time_base = Fraction(stream.time_base or Fraction(1, 1))
    stamps = sorted(set(found))
    if len(stamps) < len(found):
        warnings.append(f"{len(found) - len(stamps)} frames repeat another's timestamp")
    source_rate = _source_rate(stream, stamps, time_base)
    rate = _output_rate(fps, source_rate)
    picks = _nearest(stamps, time_base, source_rate, rate)
    warnings.extend(_shortfall(len(found), declared, stamps, time_base, declared_seconds))
    warnings.extend(_gaps(stamps, time_base))
    first = stamps[0]
    return FramePlan(
        fps=rate,
        source_pts=[stamps[i] for i in picks],
        source_times=[float((stamps[i] - first) * time_base) for i in picks],
        time_base=time_base,
        declared_frames=declared,
        found_frames=len(found),
        warnings=warnings,
        keyframes=frozenset(keys),
    )


def _open(path: Path) -> InputContainer:
    """The file opened for reading; ``VideoDecodeError`` unless it is merely missing."""
    try:
        return av.open(str(path), "r", metadata_errors="replace")
    except av.error.FileNotFoundError:
        raise
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"the video cannot be opened: {_reason(exc)}") from exc


def _timestamps(
    container: InputContainer,
    stream: VideoStream,
    warnings: list[str],
    limit: int | None = None,
    keys: set[int] | None = None,
) -> list[int]:
    """Every video packet's pts (dts where pts is missing), in file order.

    ``limit``: the most time-base units after the first packet before giving up.
    ``keys`` collects the keyframes' pts.
    """
    stamps: list[int] = []
    for packet in _packets(container, stream, warnings):
        if packet.is_discard:  # an edit list hides it: no frame is shown for it
            continue
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is not None:
            if limit is not None and stamps and stamp - stamps[0] > limit:
                raise VideoDecodeError(
                    f"the video runs longer than {limit * float(stream.time_base or 1):.0f} s "
                    "(CV_MAX_VIDEO_SECONDS), although its header said otherwise"
                )
            stamps.append(stamp)
            if keys is not None and packet.is_keyframe:
                keys.add(stamp)
    return stamps


def _packets(
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
                warnings.append(f"demux error: {_reason(exc)}")
            if errors >= MAX_DEMUX_ERRORS:
                warnings.append(f"gave up reading the file after {errors} demux errors")
                return


def _declared_seconds(container: InputContainer, stream: VideoStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _source_rate(stream: VideoStream, stamps: list[int], time_base: Fraction) -> Fraction:
    """The stream's average rate, unless its timestamps show it to be nonsense."""
    measured = None
    if len(stamps) > 1 and stamps[-1] > stamps[0]:
        measured = Fraction(len(stamps) - 1) / ((stamps[-1] - stamps[0]) * time_base)
    declared = stream.average_rate or stream.guessed_rate
    if declared and declared > 0:
        rate = Fraction(declared.numerator, declared.denominator)
        if measured is None or rate <= 2 * measured:
            return rate
    if measured is not None:
        return measured.limit_denominator(1001)
    return Fraction(25)


def _output_rate(fps: float | None, source: Fraction) -> Fraction:
    if fps is None:
        return source
    if not fps > 0:
        raise ValueError(f"fps must be positive, not {fps}")
    rate = Fraction(fps).limit_denominator(1001)
    return source if rate >= source * (1 - RATE_TOLERANCE) else rate


def _nearest(stamps: list[int], time_base: Fraction, source: Fraction, rate: Fraction) -> list[int]:
    """Per output frame k, the index of the stamp nearest to k / rate (ties: the earlier).

    Exact integer arithmetic in pts units: stamp s (from the first) is at s, output
    frame k at k * step, where step = 1 / (rate * time_base) = num / den.
    """
    relative = [s - stamps[0] for s in stamps]
    step = 1 / (rate * time_base)
    num, den = step.numerator, step.denominator
    frame = 1 / (source * time_base)  # one source frame, in pts units
    # The output ends one source frame after the last stamp, less half a pts unit: a last
    # stamp rounded up (Matroska's milliseconds) must not add a frame.
    end = relative[-1] + frame - min(Fraction(1, 2), frame / 8)
    count = max(1, -(-end // step))
    picks: list[int] = []
    i = 0
    for k in range(int(count)):
        target = k * num  # in units of 1/den
        while i + 1 < len(relative) and relative[i + 1] * den <= target:
            i += 1
        if i + 1 < len(relative) and relative[i + 1] * den - target < target - relative[i] * den:
            picks.append(i + 1)
        else:
            picks.append(i)
    return picks


def _shortfall(
    found: int,
    declared: int,
    stamps: list[int],
    time_base: Fraction,
    declared_seconds: float | None,
) -> list[str]:
    """A warning when the file holds clearly less than its header declares."""
    if declared and found < declared:
        return [f"the file ends early: {found} of {declared} declared frames were found"]
    span = float((stamps[-1] - stamps[0]) * time_base)
    if not declared and declared_seconds and span < declared_seconds - max(1.0, 0.1 * span):
        return [
            f"the file ends early: frames cover {span:.2f} s of the "
            f"{declared_seconds:.2f} s declared"
        ]
    return []


def _gaps(stamps: list[int], time_base: Fraction) -> list[str]:
    """Warnings for stretches without frames: data lost in the middle of the file.

    A gap counts when it is over ``GAP_FRAMES`` typical frames and ``GAP_SECONDS`` long,
    so the irregular spacing of a variable-rate video is not mistaken for loss.
    """
    if len(stamps) < 3:
        return []
    diffs = sorted(b - a for a, b in pairwise(stamps))
    typical = diffs[len(diffs) // 2]
    limit: Fraction = max(Fraction(GAP_FRAMES * typical), GAP_SECONDS / time_base)
    gaps = [(a, b) for a, b in pairwise(stamps) if b - a > limit]
    notes = [
        f"no frame was found between {float((a - stamps[0]) * time_base):.2f} s and "
        f"{float((b - stamps[0]) * time_base):.2f} s: the data there is damaged or missing"
        for a, b in gaps[:5]
    ]
    if len(gaps) > 5:
        notes.append(f"{len(gaps) - 5} more stretches without frames")
    return notes


# --- sizes and chunks -----------------------------------------------------------------


def output_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The processing size: aspect kept, never upscaled, both sides even (for yuv420p)."""
    if max_side is not None and max_side < 2:
        raise ValueError(f"max_side must be at least 2, not {max_side}")
    scale = 1.0 if not max_side else min(1.0, max_side / max(width, height))

    def even(side: int) -> int:
        return max(2, round(side * scale) // 2 * 2)

    return even(width), even(height)


def chunk_frames_for(width: int, height: int, max_frames: int, max_bytes: int) -> int:
    """Frames per chunk so one chunk of BGR frames stays under ``max_bytes`` (at least 1)."""
    return max(1, min(max_frames, max_bytes // (width * height * 3)))


def chunk_ranges(total: int, per_chunk: int) -> list[tuple[int, int]]:
    """``(start, count)`` of each chunk: contiguous, no gap, no overlap."""
    if per_chunk < 1:
        raise ValueError(f"per_chunk must be at least 1, not {per_chunk}")
    return [(start, min(per_chunk, total - start)) for start in range(0, total, per_chunk)]


def chunk_ranges_at_keyframes(
    source_pts: Sequence[int], per_chunk: int, keyframes: frozenset[int]
) -> list[tuple[int, int]]:
    """As ``chunk_ranges``, but each chunk starts on a keyframe where one is near.

    A chunk decodes from the keyframe at or before its first frame, so a chunk that
    starts on one decodes nothing it throws away (with a 2 s keyframe interval and
    64-frame chunks, unaligned chunks decode about a quarter more). A chunk ends at the
    last keyframe in the second half of its ``per_chunk`` frames, else after
    ``per_chunk`` frames: never longer than ``per_chunk``.
    """
    if per_chunk < 1:
        raise ValueError(f"per_chunk must be at least 1, not {per_chunk}")
    total = len(source_pts)
    ranges = []
    start = 0
    while start < total:
        end = min(start + per_chunk, total)
        if end < total:
            for cut in range(end, start + max(1, per_chunk // 2) - 1, -1):
                if source_pts[cut] in keyframes and source_pts[cut] != source_pts[cut - 1]:
                    end = cut
                    break
        ranges.append((start, end - start))
        start = end
    return ranges


# --- decoding -------------------------------------------------------------------------


@dataclass
class DecodedChunk:
    frames: np.ndarray  # (n, H, W, 3) uint8 BGR, upright, at the requested size
    missing: list[int]  # positions whose frame could not be decoded (filled in)
    damaged: list[int]  # positions FFmpeg decoded but flagged corrupt


def decode_chunk(
    path: Path, source_pts: Sequence[int], rotation: int, size: tuple[int, int]
) -> DecodedChunk:
    """The frames with these pts (a slice of ``FramePlan.source_pts``), BGR, upright.

    Seeks to the keyframe before the first pts and decodes forward, so the result is
    the same frame for frame as decoding the whole file. A frame that cannot be
    decoded is replaced by the previous decoded one of the chunk (else black) and
    named in ``missing``; corrupt packets are skipped, never raised. Only a file that
    cannot be opened at all raises (``VideoDecodeError``, or ``FileNotFoundError``).
    """
    width, height = size
    if not source_pts:
        return DecodedChunk(np.zeros((0, height, width, 3), np.uint8), [], [])
    wanted = set(source_pts)
    got: dict[int, np.ndarray] = {}
    corrupt: set[int] = set()

    def keep(frame: VideoFrame, pts: int) -> None:
        got[pts] = _to_bgr(frame, rotation, size)
        if frame.is_corrupt:
            corrupt.add(pts)

    first, last = min(wanted), max(wanted)
    with _open(path) as container:
        stream = container.streams.video[0]
        _one_thread(stream)
        try:
            container.seek(first, stream=stream, backward=True)
            landed = _decode_range(container, stream, wanted, last, keep, after_seek=True)
        except av.error.FFmpegError:
            landed = None
    if landed is None or landed > first:  # the seek overshot or failed: from the start
        got.clear()
        corrupt.clear()
        with _open(path) as container:
            stream = container.streams.video[0]
            _one_thread(stream)
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
    for packet in _packets(container, stream, warnings):
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


# --- encoding -------------------------------------------------------------------------


def _one_thread(stream: VideoStream) -> None:
    """Decode on one thread: a worker process is the unit of parallelism, and FFmpeg's
    threads would compete with the model's for the same cores (the service runs the
    decoding beside inference)."""
    stream.thread_type = "SLICE"
    stream.codec_context.thread_count = 1


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


# --- pictures ---------------------------------------------------------------------------


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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, av.error.FFmpegError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__
