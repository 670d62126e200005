"""Chain building: order, queues and task ids, on the memory:// broker (no RabbitMQ)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from kombu import Connection

from common.celery_app import celery_config, make_celery
from common.chains import (
    build_chain,
    build_chunk_chain,
    build_start,
    build_video_start,
    step_task_ids,
)
from common.contract import QUEUES, TASK_ROUTES
from common.settings import Settings
from common.steps import STEPS
from tests.support.catalogue import PIPELINES

JOB = "0123456789abcdef0123456789abcdef"
JOB_FIELDS = {"job_id": JOB, "tenant": "acme", "priority": "normal"}


@pytest.fixture
def memory_app() -> Any:
    app = make_celery(replace(Settings(), broker_url="memory://"))
    yield app
    app.close()


@pytest.mark.parametrize("name", list(PIPELINES))
def test_chain_runs_the_steps_in_order_each_on_its_queue(name: str, memory_app: Any) -> None:
    pipeline = PIPELINES[name]
    payload: Any = {**JOB_FIELDS, "pipeline": name, "options": pipeline.defaults()}
    chain = build_chain(memory_app, pipeline, payload, step_task_ids(JOB, pipeline))
    tasks = chain.tasks
    assert [t.task for t in tasks] == [s.task for s in pipeline.steps]
    assert [t.options["queue"] for t in tasks] == ["preprocess", "inference", "postprocess"]
    assert [t.options["task_id"] for t in tasks] == [f"{JOB}-{s.stage}" for s in pipeline.steps]
    assert tasks[0].args == (payload,)
    assert all(t.args == () for t in tasks[1:])
    assert [t.options["priority"] for t in tasks] == [2, 2, 2]  # "normal"


def test_publishing_puts_the_first_step_on_preprocess_with_the_rest_attached(
    memory_app: Any,
) -> None:
    pipeline = PIPELINES["detect"]
    payload: Any = {**JOB_FIELDS, "pipeline": "detect", "options": pipeline.defaults()}
    build_chain(memory_app, pipeline, payload, step_task_ids(JOB, pipeline)).apply_async()
    with Connection("memory://") as conn:
        message = conn.SimpleQueue("preprocess").get(timeout=2)
        assert message.headers["task"] == "cv.preprocess.image"
        assert message.headers["id"] == f"{JOB}-preprocess"
        args, _kwargs, embed = message.decode()
        assert args == [payload]
        rest = embed["chain"]  # stored last-first
        assert [(s["task"], s["options"]["queue"]) for s in reversed(rest)] == [
            ("cv.inference.detect", "inference"),
            ("cv.postprocess.detect", "postprocess"),
        ]
        # Shown by its job (Flower, logs), not by a repr of the payload made on each publish.
        assert message.headers["argsrepr"] == f"(job {JOB},)"
        assert all(s["options"]["argsrepr"] == f"(job {JOB},)" for s in rest)
        message.ack()
        for queue in ("inference", "postprocess"):
            assert conn.SimpleQueue(queue).qsize() == 0


def test_task_ids_must_match_steps(memory_app: Any) -> None:
    with pytest.raises(ValueError, match="one task id per step"):
        build_chain(memory_app, PIPELINES["detect"], {**JOB_FIELDS}, ["only-one"])


def test_delivery_guarantees_are_configured() -> None:
    config = celery_config(Settings())
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1
    assert config["broker_transport_options"]["confirm_publish"] is True
    assert config["task_default_delivery_mode"] == "persistent"
    assert [q.name for q in config["task_queues"]] == list(QUEUES)
    assert all(q.durable for q in config["task_queues"])


def test_a_pool_process_has_time_to_load_its_models() -> None:
    """Celery kills a pool process that is not up in 4 s; one that loads models takes more
    on a busy host, and its replacement would be killed again, for ever (seen in CI)."""
    assert celery_config(Settings())["worker_proc_alive_timeout"] == 300
    slow = Settings(worker_process_start_seconds=900)
    assert celery_config(slow)["worker_proc_alive_timeout"] == 900


@pytest.mark.parametrize("step", list(STEPS.values()), ids=lambda s: s.name)
def test_routes_send_each_task_to_its_steps_queue(step: Any) -> None:
    from fnmatch import fnmatch

    routed = [r["queue"] for pattern, r in TASK_ROUTES.items() if fnmatch(step.task, pattern)]
    assert routed == [step.queue]


def test_the_video_start_is_one_task_on_the_preprocess_queue() -> None:
    app = make_celery(replace(Settings(), broker_url="memory://"))
    payload: Any = {**JOB_FIELDS, "kind": "video", "render": "postprocess.blur-faces"}
    signature = build_video_start(app, payload, f"{JOB}-preprocess")
    assert signature.task == "cv.preprocess.video"
    assert signature.options["queue"] == "preprocess"
    assert signature.options["task_id"] == f"{JOB}-preprocess"
    assert signature.args == (payload,)
    app.close()


def test_a_chunk_runs_its_three_steps_each_on_its_queue(memory_app: Any) -> None:
    chunk = {"index": 3, "start": 24, "count": 8, "source_pts": list(range(24, 32))}
    payload: Any = {**JOB_FIELDS, "priority": "low", "pipeline": "blur-faces", "chunk": chunk}
    tasks = build_chunk_chain(memory_app, payload).tasks
    assert [t.task for t in tasks] == [
        "cv.preprocess.video_chunk",
        "cv.inference.video_chunk",
        "cv.postprocess.video_chunk",
    ]
    assert [t.options["queue"] for t in tasks] == ["preprocess", "inference", "postprocess"]
    assert [t.options["task_id"] for t in tasks] == [
        f"{JOB}-c3-{stage}" for stage in ("preprocess", "inference", "postprocess")
    ]
    assert tasks[0].args == (payload,) and all(t.args == () for t in tasks[1:])
    assert [t.options["priority"] for t in tasks] == [1, 1, 1]  # a batch member's "low"


@pytest.mark.parametrize(
    ("kind", "first_task"), [("image", "cv.preprocess.image"), ("video", "cv.preprocess.video")]
)
def test_the_first_publish_is_built_from_the_record(
    memory_app: Any, kind: str, first_task: str
) -> None:
    pipeline = PIPELINES["blur-faces"]
    options = pipeline.defaults()
    video = {"width": 640, "height": 360, "rotation": 0}
    info = {"key": f"jobs/{JOB}/input.x", "kind": kind, "width": 640, "height": 360}
    if kind == "video":
        info["video"] = video
    record = {"id": JOB, "tenant": "acme", "priority": "high", "options": options, "input": info}
    signature = build_start(memory_app, pipeline, record)
    first = signature.tasks[0] if kind == "image" else signature
    assert first.task == first_task and first.options["task_id"] == f"{JOB}-preprocess"
    payload = first.args[0]
    assert payload["input_key"] == info["key"] and payload["model_name"] == "mtcnn"
    assert payload["tenant"] == "acme" and first.options["priority"] == 3
    if kind == "video":
        assert payload["video"] == video and payload["render"] == "postprocess.blur-faces"
    else:
        assert payload["image"] == {"width": 640, "height": 360}
