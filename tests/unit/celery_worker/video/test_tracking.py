"""Tracking: ByteTrack ids over a detector whose output the test writes, and the track summary."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from celery_worker.detections import Detections as D
from celery_worker.video.tracking import Tracker, TrackSummary, tag_tracks

Detections = list[dict[str, Any]]


def detection(
    x: float, y: float, confidence: float = 0.9, name: str = "person", size: float = 60
) -> dict[str, Any]:
    class_id = {"person": 0, "car": 2, "truck": 7, "dog": 16}[name]
    box = [x, y, x + size, y + size * 1.5]
    return {"box": box, "confidence": confidence, "class_id": class_id, "class_name": name}


def moving(
    starts: list[tuple[float, float]],
    steps: list[tuple[float, float]],
    frames: int,
    jitter: float = 0.0,
    seed: int = 0,
) -> tuple[list[Detections], list[list[int]]]:
    """Frames of boxes moving at constant velocity (plus jitter and confidence noise), each
    frame's detections shuffled; and, per frame, which object each detection is."""
    rng = np.random.default_rng(seed)
    video, truth = [], []
    for frame in range(frames):
        order = [int(k) for k in rng.permutation(len(starts))]
        shifts = rng.uniform(-jitter, jitter, (len(starts), 2))
        video.append(
            [
                detection(
                    starts[k][0] + steps[k][0] * frame + shifts[k][0],
                    starts[k][1] + steps[k][1] * frame + shifts[k][1],
                    confidence=float(rng.uniform(0.5, 0.95)),
                )
                for k in order
            ]
        )
        truth.append(order)
    return video, truth


def run(tracker: Tracker, video: list[Detections]) -> list[list[int | None]]:
    return [tracker.update(D.from_json(frame)) for frame in video]


# Crossing boxes pass at most 8 px apart (IoU about 0.87): two identical boxes in one frame
# would make that frame's answer a coin toss (seen: only that frame swaps), and NMS removes them.
PATHS = {
    "one box, jitter": ([(100, 200)], [(5, 0)], 3.0),
    "two separate paths": ([(100, 100), (100, 500)], [(6, 1), (5, -1)], 3.0),
    "crossing, same row": ([(100, 200), (572, 200)], [(8, 0), (-8, 0)], 0.0),
    "crossing, offset rows": ([(100, 200), (572, 230)], [(8, 0), (-8, 0)], 0.0),
    "crossing diagonals": ([(100, 100), (100, 500)], [(6, 7), (6, -7)], 0.0),
}


@pytest.mark.parametrize("starts, steps, jitter", PATHS.values(), ids=PATHS.keys())
def test_each_object_keeps_one_id(
    starts: list[tuple[float, float]], steps: list[tuple[float, float]], jitter: float
) -> None:
    video, truth = moving(starts, steps, 60, jitter)
    ids = run(Tracker(fps=30), video)
    per_object: dict[int, set[int | None]] = {k: set() for k in range(len(starts))}
    for frame_ids, order in zip(ids, truth, strict=True):
        for track_id, k in zip(frame_ids, order, strict=True):
            per_object[k].add(track_id)
    assert [len(seen) for seen in per_object.values()] == [1] * len(starts), per_object
    assert {next(iter(seen)) for seen in per_object.values()} == set(range(1, len(starts) + 1))


@pytest.mark.parametrize(
    "gap, same_id",
    # buffer: 10 frames; ByteTrack keeps a just-removed track one frame more, hence 11
    [(1, True), (4, True), (9, True), (11, True), (12, False), (15, False), (30, False)],
)
def test_an_object_back_within_the_buffer_keeps_its_id(gap: int, same_id: bool) -> None:
    tracker = Tracker(fps=10, buffer_seconds=1.0)
    assert tracker.track_buffer == 10
    before = [tracker.update(D.from_json([detection(100 + 4 * f, 200)])) for f in range(10)]
    assert run(tracker, [[]] * gap) == [[]] * gap
    after = [
        tracker.update(D.from_json([detection(100 + 4 * f, 200)]))
        for f in range(10 + gap, 20 + gap)
    ]
    assert before == [[1]] * 10
    if same_id:
        assert after == [[1]] * 10
    else:  # a new track: confirmed on its second frame
        assert after == [[None]] + [[2]] * 9


def test_frames_without_detections() -> None:
    tracker = Tracker(fps=30)
    assert run(tracker, [[], [], []]) == [[], [], []]
    video, _ = moving([(100, 200)], [(3, 0)], 5)
    assert run(tracker, video) == [[None], [1], [1], [1], [1]]  # first frame 4: confirmed on 5
    assert tracker.update(D.from_json([])) == []
    assert tracker.update(D.from_json([detection(100 + 3 * 6, 200)])) == [1]


@pytest.mark.parametrize(
    "confidences, expected",
    [
        ([0.05, 0.05, 0.05], [None, None, None]),  # below track_low_thresh (0.1)
        ([0.15, 0.15, 0.15], [None, None, None]),  # too low to start a track (0.25)
        ([0.9, 0.15, 0.9], [1, 1, 1]),  # but low enough to continue one
        ([0.9, 0.05, 0.9], [1, None, 1]),
        ([0.3, 0.3, 0.3], [1, 1, 1]),  # the first frame confirms at once
    ],
)
def test_confidence_thresholds(confidences: list[float], expected: list[int | None]) -> None:
    tracker = Tracker(fps=30)
    ids = [
        tracker.update(D.from_json([detection(100 + 2 * f, 200, c)]))[0]
        for f, c in enumerate(confidences)
    ]
    assert ids == expected


def test_low_confidence_detection_beside_a_track() -> None:
    tracker = Tracker(fps=30)
    for f in range(3):
        ids = tracker.update(D.from_json([detection(500, 500, 0.05), detection(100 + 2 * f, 200)]))
    assert ids == [None, 1]


def test_degenerate_box_gets_none() -> None:
    flat = {"box": [10, 10, 50, 10], "confidence": 0.9, "class_id": 0, "class_name": "person"}
    tracker = Tracker(fps=30)
    assert [tracker.update(D.from_json([flat, detection(100, 100)])) for _ in range(2)] == [
        [None, 1]
    ] * 2


def test_ids_count_from_one_per_tracker_even_after_tentative_tracks_die() -> None:
    tracker = Tracker(fps=30)
    tracker.update(D.from_json([]))
    tracker.update(D.from_json([detection(900, 900)]))  # tentative track, never confirmed
    tracker.update(D.from_json([]))
    ids = run(tracker, [[detection(100, 100)], [detection(102, 100)]])
    assert ids == [[None], [1]]  # ByteTrack itself numbered this track 2
    assert Tracker(fps=30).update(D.from_json([detection(5, 5)])) == [1]


def test_tag_tracks_backfills_the_detection_that_started_a_track() -> None:
    video, _ = moving([(100, 200)], [(3, 0)], 4)
    frames = [(i, i / 30, D.from_json(dets)) for i, dets in enumerate([[], *video])]
    tagged = list(tag_tracks(frames, Tracker(fps=30)))
    assert [(i, t) for i, t, _ in tagged] == [(i, t) for i, t, _ in frames]
    assert [list(dets.track_id or ()) for _, _, dets in tagged] == [[], [1], [1], [1], [1]]
    assert tagged[1][2].to_json()[0]["box"] == video[0][0]["box"]
    assert frames[1][2].track_id is None  # copies, not the caller's detections


@pytest.mark.parametrize("fps, buffer_seconds", [(0, 1.0), (-5, 1.0), (30, -1.0)])
def test_bad_settings_are_refused(fps: float, buffer_seconds: float) -> None:
    with pytest.raises(ValueError):
        Tracker(fps, buffer_seconds)


def tagged(
    name: str, track_id: int | None, confidence: float = 0.5, x: float = 10.0
) -> dict[str, Any]:
    return {**detection(x, 20.0, confidence, name), "track_id": track_id}


def small_video() -> TrackSummary:
    """10 fps, 1 s buckets, frames 0-34: bucket 2 (frames 20-29) is empty."""
    summary = TrackSummary(bucket_seconds=1.0)
    for index in range(35):
        frame = []
        if index < 15:
            frame.append(tagged("person", 1, 0.99 if index == 7 else 0.6, x=index + 0.123))
        if 5 <= index < 10:
            frame.append(tagged("truck" if index == 5 else "car", 2, 0.7))
        if index == 12:
            frame.append(tagged("person", None))
        if index == 3:
            frame.append(tagged("dog", None))
        if index >= 30:
            frame += [tagged("person", 3), tagged("person", None)]
        summary.add(index, index / 10, D.from_json(frame))
    return summary


def test_summary_tracks() -> None:
    tracks = small_video().tracks()
    assert [t["id"] for t in tracks] == [1, 2, 3]
    assert tracks[0] == {
        "id": 1,
        "class_id": 0,
        "class_name": "person",
        "first_frame": 0,
        "last_frame": 14,
        "first_time": 0.0,
        "last_time": 1.4,
        "frames": 15,
        "best": {"frame": 7, "time": 0.7, "box": [7.12, 20.0, 67.12, 110.0], "confidence": 0.99},
    }
    car = tracks[1]
    assert (car["class_name"], car["class_id"], car["frames"]) == ("car", 2, 5)
    assert (car["first_frame"], car["last_frame"], car["best"]["frame"]) == (5, 9, 5)
    assert (tracks[2]["first_time"], tracks[2]["last_time"]) == (3.0, 3.4)


def test_summary_counts_and_timeline() -> None:
    summary = small_video().summary()
    assert summary["unique_tracks"] == {"car": 1, "person": 2}
    assert summary["detections"] == {"car": 4, "dog": 1, "person": 26, "truck": 1}
    assert summary["untracked_detections"] == 7
    assert summary["timeline"] == [
        {
            "start": 0.0,
            "end": 1.0,
            "tracks": {"car": 1, "person": 1},
            "max_visible": {"car": 1, "dog": 1, "person": 1, "truck": 1},
        },
        {"start": 1.0, "end": 2.0, "tracks": {"person": 1}, "max_visible": {"person": 2}},
        {"start": 2.0, "end": 3.0, "tracks": {}, "max_visible": {}},
        {"start": 3.0, "end": 4.0, "tracks": {"person": 1}, "max_visible": {"person": 2}},
    ]


@pytest.mark.parametrize(
    "bucket_seconds, last_time, buckets",
    [(1.0, 0.0, 1), (1.0, 0.999, 1), (1.0, 1.0, 2), (0.5, 2.2, 5), (0.1, 0.3, 4)],
)
def test_timeline_runs_to_the_last_frame(
    bucket_seconds: float, last_time: float, buckets: int
) -> None:
    summary = TrackSummary(bucket_seconds)
    summary.add(0, 0.0, D.empty())
    summary.add(1, last_time, D.empty())
    timeline = summary.summary()["timeline"]
    assert len(timeline) == buckets
    assert timeline[-1]["end"] == round(buckets * bucket_seconds, 3)


def test_summary_of_nothing() -> None:
    summary = TrackSummary()
    assert summary.tracks() == []
    assert summary.summary() == {
        "unique_tracks": {},
        "detections": {},
        "untracked_detections": 0,
        "timeline": [],
    }


def test_everything_is_json_safe() -> None:
    summary = small_video()
    odd = tagged("dog", 4)
    odd.update(
        box=list(np.asarray([1.005, 2, 3, 4], np.float32)),
        confidence=np.float32(0.8),
        class_id=np.int64(16),
    )
    summary.add(np.int64(40), np.float64(1 / 3 + 4), D.from_json([odd]))  # type: ignore[arg-type]
    document: dict[str, Any] = {"tracks": summary.tracks(), "summary": summary.summary()}
    assert json.loads(json.dumps(document)) == document
    dog = document["tracks"][-1]
    assert (dog["first_time"], dog["class_id"], dog["best"]["confidence"]) == (4.333, 16, 0.8)
    assert type(dog["first_frame"]) is int
