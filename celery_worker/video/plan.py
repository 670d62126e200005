"""Planning a video: which source frame each output frame shows, at a constant rate.

Demux only (no decoding), so an hour of video plans in seconds. Output frame k is
at ``k / fps`` and shows the source frame nearest that time; what is missing or
damaged in the file is named in ``FramePlan.warnings``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import av
from av.container import InputContainer
from av.video.stream import VideoStream

from celery_worker.video.demux import VideoDecodeError, open_video, packets

# A requested rate this close below the source's counts as the source's (29.97 vs
# 30000/1001), so asking for "the same rate" never drops one frame in a thousand.
RATE_TOLERANCE = Fraction(1, 10_000)
# A stretch without frames longer than both of these is reported as lost data.
GAP_FRAMES = 5
GAP_SECONDS = Fraction(1, 2)


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
    with open_video(path) as container:
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
    for packet in packets(container, stream, warnings):
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


def output_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The processing size: aspect kept, never upscaled, both sides even (for yuv420p)."""
    if max_side is not None and max_side < 2:
        raise ValueError(f"max_side must be at least 2, not {max_side}")
    scale = 1.0 if not max_side else min(1.0, max_side / max(width, height))

    def even(side: int) -> int:
        return max(2, round(side * scale) // 2 * 2)

    return even(width), even(height)
