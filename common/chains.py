"""Every Celery chain the service publishes, built by pure functions (testable without a broker).

- an image job: preprocess -> inference -> postprocess, each step on its own queue
  (``build_chain``);
- a video job: its planning step alone (``build_video_start``); the workers, which
  alone know how many chunks there are, then publish one chain per chunk
  (``build_chunk_chain``) and the finishing step;
- a prompt job (``build_prompt``): the SAM decoder on one request's prompts, after the
  image's embedding when that has to come first.

``build_start`` makes a job's first publish from what its record holds, so the API
(on submission) and upkeep (re-publishing a job the API recorded but never
published) publish the same thing.

Every message of a job carries its priority (``low`` for batch members, ``normal``,
``high`` for admins): RabbitMQ hands out higher ones first, so one tenant's big batch
never makes another's single photo wait behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.canvas import Signature, chain

from common.catalogue import PipelineConfig
from common.contract import (
    PRIORITIES,
    QUEUE_INFERENCE,
    QUEUE_POSTPROCESS,
    QUEUE_PREPROCESS,
    TASK_INFER_VIDEO_CHUNK,
    TASK_POSTPROCESS_VIDEO_CHUNK,
    TASK_PREPROCESS_VIDEO,
    TASK_PREPROCESS_VIDEO_CHUNK,
    TASK_SAM_EMBED,
    TASK_SAM_PROMPT,
    ChunkPayload,
    ImagePayload,
    JobPayload,
    Priority,
    VideoPayload,
)

CHUNK_STEPS = (
    (TASK_PREPROCESS_VIDEO_CHUNK, QUEUE_PREPROCESS, "preprocess"),
    (TASK_INFER_VIDEO_CHUNK, QUEUE_INFERENCE, "inference"),
    (TASK_POSTPROCESS_VIDEO_CHUNK, QUEUE_POSTPROCESS, "postprocess"),
)


def step_task_ids(job_id: str, pipeline: PipelineConfig) -> list[str]:
    """Task ids fixed up front, so the job record can list (and revoke) every step."""
    return [f"{job_id}-{step.stage}" for step in pipeline.steps]


def build_chain(
    app: Celery, pipeline: PipelineConfig, payload: ImagePayload, task_ids: Sequence[str]
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
            priority=rank(payload["priority"]),
            **described(payload["job_id"]),
        )
        for index, (step, task_id) in enumerate(zip(pipeline.steps, task_ids, strict=True))
    ]
    return chain(*signatures)


def build_video_start(app: Celery, payload: VideoPayload, task_id: str) -> Signature:
    """The first step of a video job: plan and split into chunks (preprocess queue)."""
    return app.signature(
        TASK_PREPROCESS_VIDEO,
        args=(dict(payload),),
        queue=QUEUE_PREPROCESS,
        routing_key=QUEUE_PREPROCESS,
        task_id=task_id,
        priority=rank(payload["priority"]),
        **described(payload["job_id"]),
    )


def build_chunk_chain(app: Celery, payload: ChunkPayload) -> Signature:
    """One chunk of a video through the three queues; task ids name the job, chunk, stage."""
    job_id, index = payload["job_id"], payload["chunk"]["index"]
    return chain(
        *(
            app.signature(
                task,
                args=(dict(payload),) if position == 0 else (),
                queue=queue,
                routing_key=queue,
                task_id=f"{job_id}-c{index}-{stage}",
                priority=rank(payload["priority"]),
                **described(job_id),
            )
            for position, (task, queue, stage) in enumerate(CHUNK_STEPS)
        )
    )


def build_start(app: Celery, pipeline: PipelineConfig, record: dict[str, Any]) -> Signature:
    """A job's first publish, from its record: options, tenant, priority and input
    (``key``, ``kind``, size)."""
    job_id, options, input_info = record["id"], record["options"], record["input"]
    task_ids = step_task_ids(job_id, pipeline)
    base: JobPayload = {
        "job_id": job_id,
        "tenant": record["tenant"],
        "priority": record["priority"],
        "pipeline": pipeline.name,
        "model_name": options["model"],
        "options": options,
        "input_key": input_info["key"],
    }
    if input_info["kind"] == "video":
        video: VideoPayload = {
            **base,
            "kind": "video",
            "video": input_info["video"],
            "render": pipeline.steps[-1].name,
        }
        return build_video_start(app, video, task_ids[0])
    size = {"width": input_info["width"], "height": input_info["height"]}
    # mypy cannot tell that ** of a JobPayload fills an ImagePayload's required keys.
    image: ImagePayload = {**base, "image": size}  # type: ignore[typeddict-item]
    return build_chain(app, pipeline, image, task_ids)


def build_prompt(
    app: Celery, record: dict[str, Any], decoder_queue: str, embed_first: bool
) -> Signature:
    """A prompt job's publish (``POST /v1/images/{id}/segment``), from its record: the
    decoder on ``decoder_queue``, after the image's embedding on the inference queue when
    ``embed_first`` (the decoder runs on CPU workers and the embedding is not cached)."""
    job_id, options, image = record["id"], record["options"], record["input"]
    payload = {
        "job_id": job_id,
        "tenant": record["tenant"],
        "priority": record["priority"],
        "pipeline": record["pipeline"],
        "model_name": options["model"],
        "options": options,
        "prompts": options["prompts"],
        "input_key": image["key"],
        "image": {"width": image["width"], "height": image["height"]},
        "image_id": image["image_id"],
        "sha256": image["sha256"],
    }
    priority = rank(record["priority"])
    prompt = app.signature(
        TASK_SAM_PROMPT,
        queue=decoder_queue,
        routing_key=decoder_queue,
        task_id=f"{job_id}-inference",
        priority=priority,
        **described(job_id),
    )
    if not embed_first or decoder_queue == QUEUE_INFERENCE:
        return prompt.clone(args=(payload,))  # the decoder encodes, when it must, itself
    embed = app.signature(
        TASK_SAM_EMBED,
        args=(payload,),
        queue=QUEUE_INFERENCE,
        routing_key=QUEUE_INFERENCE,
        task_id=f"{job_id}-embed",
        priority=priority,
        **described(job_id),
    )
    return chain(embed, prompt)


def described(job_id: str) -> dict[str, str]:
    """How a message shows its arguments (Flower, worker logs): by its job. Celery would
    otherwise ``saferepr`` the whole payload on every publish, a third of its cost."""
    return {"argsrepr": f"(job {job_id},)", "kwargsrepr": "{}"}


def rank(priority: Priority | str) -> int:
    """The RabbitMQ priority of a job's messages."""
    ranks: dict[str, int] = {name: value for name, value in PRIORITIES.items()}
    return ranks.get(priority, PRIORITIES["normal"])
