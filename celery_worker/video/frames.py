"""Models on batches of video frames -> one ``Detections`` per frame, in frame pixels.

The image steps hand the model a preprocessed array and map results back with
the letterbox they made; a video's frames are already the size the output video
has, so the model gets them as they are (Ultralytics letterboxes them itself, as
for a direct ``predict`` call) and the boxes come back in frame pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from celery_worker import metrics
from celery_worker.adapters import from_mtcnn, from_yolo
from celery_worker.detections import Detections
from celery_worker.imaging import faces_input
from celery_worker.models import LoadedModel, detect_faces, yolo_arguments
from common.prompts import Prompt


def detect_frames(
    loaded: LoadedModel,
    frames: Sequence[np.ndarray],
    options: dict[str, Any],
    prompts: Sequence[Prompt] | None = None,
    finder: LoadedModel | None = None,
) -> list[Detections]:
    """Run the model of ``loaded`` (detect, segment or faces) on frames, ``max_batch`` at once.

    A SAM model answers ``prompts`` on each frame, or segments what ``finder`` (a
    detector: detect-sam) finds on it, one frame at a time.
    """
    if loaded.spec.task == "sam":
        from celery_worker.tasks.sam import segment_frame

        metrics.batch_run(loaded.spec.name, len(frames))
        return [segment_frame(loaded, frame, options, prompts, finder) for frame in frames]
    config = loaded.spec.config
    batch = max(1, config.max_batch if config else 1)
    out: list[Detections] = []
    for first in range(0, len(frames), batch):
        part = frames[first : first + batch]
        metrics.batch_run(loaded.spec.name, len(part))
        if loaded.spec.task == "faces":
            out.extend(_faces(loaded, part, float(options["min_confidence"])))
        else:
            results = loaded.model.predict(list(part), **yolo_arguments(options, loaded.device))
            out.extend(from_yolo(result, loaded.names) for result in results)
    return out


def _faces(
    loaded: LoadedModel, frames: Sequence[np.ndarray], min_confidence: float
) -> list[Detections]:
    height, width = frames[0].shape[:2]
    inputs = [faces_input(frame) for frame in frames]
    scale = inputs[0][1]  # the frames of a video share one size
    batch = np.stack([rgb for rgb, _ in inputs])
    boxes, probs, landmarks = detect_faces(loaded.model, batch)
    return [
        from_mtcnn(boxes[i], probs[i], landmarks[i], scale, (width, height), min_confidence)
        for i in range(len(frames))
    ]
