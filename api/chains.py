"""Builds the Celery chain of a pipeline: pure, testable without a broker."""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery
from celery.canvas import Signature, chain

from common.catalogue import PipelineConfig
from common.contract import QUEUE_PREPROCESS, TASK_PREPROCESS_VIDEO, Payload


def step_task_ids(job_id: str, pipeline: PipelineConfig) -> list[str]:
    """Task ids fixed up front, so the job record can list (and revoke) every step."""
    return [f"{job_id}-{step.stage}" for step in pipeline.steps]


def build_chain(
    app: Celery, pipeline: PipelineConfig, payload: Payload, task_ids: Sequence[str]
) -> Signature:
    """preprocess -> inference -> postprocess, each step on its own queue.

    Only the first step gets the payload; each later step receives what the
    previous one returned (a Celery chain passes results along).
    """
    if len(task_ids) != len(pipeline.steps):
        raise ValueError("one task id per step")
    signatures = [
        app.signature(
            step.task,
            args=(dict(payload),) if index == 0 else (),
            queue=step.queue,
            routing_key=step.queue,
            task_id=task_id,
        )
        for index, (step, task_id) in enumerate(zip(pipeline.steps, task_ids, strict=True))
    ]
    return chain(*signatures)


def build_video_start(app: Celery, payload: Payload, task_id: str) -> Signature:
    """The first step of a video job: probe, plan and split into chunks (preprocess queue).

    The chunks' own chains (preprocess -> inference -> postprocess per chunk, then one
    finishing step) are published by the workers, which alone know how many there are.
    """
    return app.signature(
        TASK_PREPROCESS_VIDEO,
        args=(dict(payload),),
        queue=QUEUE_PREPROCESS,
        routing_key=QUEUE_PREPROCESS,
        task_id=task_id,
    )
