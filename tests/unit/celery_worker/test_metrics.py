"""celery_worker.metrics: exporter ports, and what a step or a job's end records."""

from __future__ import annotations

from dataclasses import replace

import pytest

from celery_worker import metrics
from common.metrics import REGISTRY
from common.settings import Settings


@pytest.mark.parametrize(
    ("queues", "port"),
    [
        (["preprocess"], 9101),
        (["inference"], 9102),
        (["postprocess"], 9103),
        (["notify"], 9104),
        (["postprocess", "preprocess"], 9103),
        ([], 9101),
    ],
)
def test_each_worker_service_has_its_port(queues: list[str], port: int) -> None:
    assert metrics.exporter_port(Settings(), queues) == port


def test_no_exporter_when_the_port_is_zero() -> None:
    assert metrics.exporter_port(replace(Settings(), worker_metrics_port=0), ["inference"]) == 0


def value(name: str, **labels: str) -> float:
    found = REGISTRY.get_sample_value(name, labels)
    return found or 0.0


def test_a_chunk_step_counts_its_frames_and_time() -> None:
    labels = {"step": "inference", "model": "unit-model"}
    before = value("cv_video_frames_total", **labels)
    count = value("cv_step_duration_seconds_count", **labels)
    payload = {
        "job_id": "j",
        "tenant": "t",
        "model_name": "unit-model",
        "chunk": {"index": 2, "count": 8},
    }
    metrics.step_done("inference", payload, 0.5, "inference")
    assert value("cv_video_frames_total", **labels) == before + 8
    assert value("cv_step_duration_seconds_count", **labels) == count + 1
    assert value("cv_video_chunk_frames_per_second", **labels) == 16


def test_an_image_inference_is_a_batch_of_one() -> None:
    labels = {"model": "unit-image-model"}
    before = value("cv_inference_batch_size_count", **labels)
    payload = {"job_id": "j", "tenant": "t", "model_name": "unit-image-model"}
    metrics.step_done("inference", payload, 0.1, "inference")
    assert value("cv_inference_batch_size_count", **labels) == before + 1
    assert value("cv_inference_batch_size_bucket", le="1.0", **labels) == before + 1


@pytest.mark.parametrize(
    ("record", "outcome", "kind"),
    [
        ({"state": "succeeded", "pipeline": "unit-p", "tenant": "acme"}, "succeeded", ""),
        (
            {"state": "failed", "pipeline": "unit-p", "tenant": "acme", "error": {"kind": "input"}},
            "failed",
            "input",
        ),
    ],
)
def test_a_job_end_is_counted_with_its_outcome(
    record: dict[str, object], outcome: str, kind: str
) -> None:
    labels = {"pipeline": "unit-p", "tenant": "acme", "outcome": outcome, "error_kind": kind}
    before = value("cv_jobs_finished_total", **labels)
    metrics.job_ended(record)
    assert value("cv_jobs_finished_total", **labels) == before + 1


def test_no_gpu_series_on_a_cpu_worker() -> None:
    metrics.gpu_memory()
    assert not [
        s
        for f in REGISTRY.collect()
        if f.name == "cv_gpu_memory_allocated_bytes"
        for s in f.samples
    ]
