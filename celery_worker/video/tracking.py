"""Track ids across a video's frames (Ultralytics' ByteTrack) and a per-video track summary.

A video job detects on every frame first; then one sequential pass, in frame order, feeds each
frame's ``Detections`` to a :class:`Tracker`, which answers one track id per detection, and to a
:class:`TrackSummary`, which builds the JSON-safe per-track and per-class report.
:func:`tag_tracks` does both halves of that pass's bookkeeping: ids as the detections'
``track_id`` column, one frame late so that the detection which started a track carries its id
too.

Ultralytics objects never leave this module: a tiny numpy stand-in for ``Boxes`` goes in, and
``BYTETracker``'s index column maps its answer back onto the detections' rows.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from celery_worker.detections import Detections

Frame = tuple[int, float, Detections]  # (frame index, time in seconds, detections)


class _Boxes:
    """What ``BYTETracker.update`` reads of Ultralytics' ``Boxes``, as plain numpy.

    ``conf``, ``cls``, ``xywh`` (no ``xywhr``: axis-aligned boxes), ``xyxy`` (read by camera
    motion compensation, which ByteTrack does not run), ``len`` and boolean-mask indexing.
    """

    def __init__(
        self, xyxy: NDArray[np.float32], conf: NDArray[np.float32], cls: NDArray[np.float32]
    ) -> None:
        self.xyxy, self.conf, self.cls = xyxy, conf, cls

    @classmethod
    def from_detections(cls, detections: Detections) -> _Boxes:
        return cls(
            detections.xyxy.astype(np.float32),
            detections.confidence.astype(np.float32),
            detections.class_id.astype(np.float32),
        )

    @property
    def xywh(self) -> NDArray[np.float32]:
        x1, y1, x2, y2 = self.xyxy.T
        return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=1)

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, mask: NDArray[np.bool_]) -> _Boxes:
        return _Boxes(self.xyxy[mask], self.conf[mask], self.cls[mask])


def _byte_tracker(track_buffer: int) -> Any:
    """``BYTETracker`` with the defaults of ``cfg/trackers/bytetrack.yaml``, but our buffer.

    Ultralytics is configured offline by the worker (``models.configure_ultralytics``).
    """
    from ultralytics.trackers.byte_tracker import BYTETracker
    from ultralytics.utils import ROOT, YAML, IterableSimpleNamespace

    config = YAML.load(ROOT / "cfg" / "trackers" / "bytetrack.yaml")
    return BYTETracker(IterableSimpleNamespace(**{**config, "track_buffer": track_buffer}))


class Tracker:
    """ByteTrack over plain per-frame detections; one per video.

    Call :meth:`update` once per frame in frame order, with no detections for frames without any
    or that could not be decoded, so lost tracks age in frames. ByteTrack is class-agnostic (a
    track may change class; :class:`TrackSummary` reports its majority class) and only confirms a
    new track on its second matched frame (on the very first frame at once). ``update`` answers
    for the current frame; :attr:`backfill` then names the previous frame's detections that
    started a track confirmed just now (:func:`tag_tracks` applies it).

    A lost track comes back under its id after a gap of up to ``track_buffer + 1`` frames
    (ByteTrack's bookkeeping keeps a just-removed track one frame more); after a longer gap the
    object starts a new track. Ids are ours, 1, 2, ... in the order tracks are confirmed:
    ByteTrack's own ids also count tentative tracks that never got confirmed.
    """

    def __init__(self, fps: float, buffer_seconds: float = 1.0) -> None:
        if not fps > 0 or buffer_seconds < 0:
            raise ValueError(f"need fps > 0 and buffer_seconds >= 0, got {fps}, {buffer_seconds}")
        self.track_buffer = max(1, round(fps * buffer_seconds))  # frames a lost track is kept
        self._byte = _byte_tracker(self.track_buffer)
        self._ids: dict[int, int] = {}  # ByteTrack's id -> ours (1, 2, ... in order confirmed)
        self._starts: dict[int, int] = {}  # unconfirmed ByteTrack id -> index of its detection
        self.backfill: dict[int, int] = {}  # previous frame's detection index -> track id

    def update(self, detections: Detections) -> list[int | None]:
        """One track id per detection, same order; None where no confirmed track took it."""
        rows = np.asarray(self._byte.update(_Boxes.from_detections(detections)))
        ids: list[int | None] = [None] * len(detections)
        backfill: dict[int, int] = {}
        for row in rows.reshape(-1, 8):  # [x1, y1, x2, y2, track_id, score, cls, idx]
            byte_id, index = int(row[4]), int(row[7])
            # ByteTrack spends ids on tentative tracks that die; ours count confirmed ones only.
            ours = ids[index] = self._ids.setdefault(byte_id, len(self._ids) + 1)
            if byte_id in self._starts:
                backfill[self._starts[byte_id]] = ours
        self.backfill = backfill
        self._starts = {
            int(t.track_id): int(t.idx) for t in self._byte.tracked_stracks if not t.is_activated
        }
        return ids


def tag_tracks(frames: Iterable[Frame], tracker: Tracker) -> Iterator[Frame]:
    """The frames again, their detections with a ``track_id`` column, each one frame late.

    The delay lets the detection that started a track get its id when ByteTrack confirms the
    track on the next frame; without it that first detection would stay ``None``.
    """
    previous: tuple[int, float, Detections, list[int | None]] | None = None
    for index, time, detections in frames:
        ids = tracker.update(detections)
        if previous is not None:
            for position, track_id in tracker.backfill.items():
                previous[3][position] = track_id
            yield _tagged(previous)
        previous = (index, time, detections, ids)
    if previous is not None:
        yield _tagged(previous)


def _tagged(frame: tuple[int, float, Detections, list[int | None]]) -> Frame:
    index, time, detections, ids = frame
    return index, time, detections.with_columns(track_id=tuple(ids))


@dataclass
class _Track:
    first_frame: int
    first_time: float
    last_frame: int
    last_time: float
    best: dict[str, Any]
    frames: int = 0
    classes: Counter[str] = field(default_factory=Counter)
    class_ids: dict[str, Any] = field(default_factory=dict)

    def majority(self) -> str:
        return self.classes.most_common(1)[0][0]  # ties: the class seen first


@dataclass
class _Bucket:
    tracks: set[int] = field(default_factory=set)
    max_visible: Counter[str] = field(default_factory=Counter)


class TrackSummary:
    """Per-track and per-class report of a tagged video; fed frame by frame, memory per track.

    Call :meth:`add` for every frame (empty ones too: the timeline runs to the last frame added).
    A track's class is its majority class; the timeline's ``tracks`` counts a track under that
    class, ``max_visible`` counts detections (tracked or not) under their own class.
    """

    def __init__(self, bucket_seconds: float = 1.0) -> None:
        if not bucket_seconds > 0:
            raise ValueError(f"bucket_seconds must be > 0, got {bucket_seconds}")
        self.bucket_seconds = bucket_seconds
        self._tracks: dict[int, _Track] = {}
        self._buckets: dict[int, _Bucket] = {}
        self._detections: Counter[str] = Counter()
        self._untracked = 0
        self._last_time: float | None = None

    def add(self, index: int, time: float, detections: Detections) -> None:
        """One frame's detections, with their ``track_id`` column (ints or None)."""
        time = round(float(time), 3)
        self._last_time = time if self._last_time is None else max(self._last_time, time)
        bucket = self._buckets.setdefault(self._bucket_of(time), _Bucket())
        visible = Counter(detections.class_name)
        for name, count in visible.items():
            bucket.max_visible[name] = max(bucket.max_visible[name], count)
        self._detections.update(visible)
        track_ids = detections.track_id or (None,) * len(detections)
        for row, track_id in enumerate(track_ids):
            if track_id is None:
                self._untracked += 1
                continue
            bucket.tracks.add(int(track_id))
            self._record(int(track_id), int(index), time, detections, row)

    def _record(
        self, track_id: int, index: int, time: float, detections: Detections, row: int
    ) -> None:
        best = {
            "frame": index,
            "time": time,
            "box": [round(float(v), 2) for v in detections.xyxy[row]],
            "confidence": round(float(detections.confidence[row]), 4),
        }
        track = self._tracks.setdefault(track_id, _Track(index, time, index, time, best))
        if (index, time) < (track.first_frame, track.first_time):
            track.first_frame, track.first_time = index, time
        if (index, time) > (track.last_frame, track.last_time):
            track.last_frame, track.last_time = index, time
        if best["confidence"] > track.best["confidence"]:  # ties: the earlier detection
            track.best = best
        track.frames += 1
        name = detections.class_name[row]
        track.classes[name] += 1
        track.class_ids.setdefault(name, int(detections.class_id[row]))

    def _bucket_of(self, time: float) -> int:
        return math.floor(round(time / self.bucket_seconds, 6))  # 0.9999999 is bucket 1

    def tracks(self) -> list[dict[str, Any]]:
        """One dict per track id, sorted by id."""
        out = []
        for track_id, track in sorted(self._tracks.items()):
            name = track.majority()
            out.append(
                {
                    "id": track_id,
                    "class_id": track.class_ids[name],
                    "class_name": name,
                    "first_frame": track.first_frame,
                    "last_frame": track.last_frame,
                    "first_time": track.first_time,
                    "last_time": track.last_time,
                    "frames": track.frames,
                    "best": dict(track.best),
                }
            )
        return out

    def summary(self) -> dict[str, Any]:
        """Counts per class and a timeline of ``bucket_seconds`` buckets, empty ones included."""
        majority = {track_id: track.majority() for track_id, track in self._tracks.items()}
        timeline = []
        last = -1 if self._last_time is None else self._bucket_of(self._last_time)
        for number in range(last + 1):
            bucket = self._buckets.get(number, _Bucket())
            timeline.append(
                {
                    "start": round(number * self.bucket_seconds, 3),
                    "end": round((number + 1) * self.bucket_seconds, 3),
                    "tracks": _sorted(Counter(majority[t] for t in bucket.tracks)),
                    "max_visible": _sorted(bucket.max_visible),
                }
            )
        return {
            "unique_tracks": _sorted(Counter(majority.values())),
            "detections": _sorted(self._detections),
            "untracked_detections": self._untracked,
            "timeline": timeline,
        }


def _sorted(counts: Counter[str]) -> dict[str, int]:
    return {name: int(counts[name]) for name in sorted(counts) if counts[name]}
