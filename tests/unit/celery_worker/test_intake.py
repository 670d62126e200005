"""The batch intake on the memory:// broker: what it takes, what it leaves, what it forwards."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from celery import chain

from celery_worker.intake import Intake
from common.celery_app import make_celery
from common.contract import QUEUE_INFERENCE, QUEUE_POSTPROCESS
from common.settings import Settings


@pytest.fixture
def app() -> Any:
    app = make_celery(replace(Settings(), broker_url="memory://"), name="intake-test")
    yield app
    app.close()


def send(app: Any, task: str, payload: dict[str, Any]) -> None:
    app.send_task(task, args=(payload,), queue=QUEUE_INFERENCE, routing_key=QUEUE_INFERENCE)


def test_takes_its_task_in_order_and_stops_at_another(app: Any) -> None:
    for index, task in enumerate(["a", "a", "b", "a"]):
        send(app, task, {"n": index})
    intake = Intake(app)
    taken, stray = intake.take(QUEUE_INFERENCE, "a", most=8, wait_seconds=0)
    assert [d.payload["n"] for d in taken] == [0, 1]
    assert stray is not None and (stray.task, stray.payload) == ("b", {"n": 2})
    assert not any(d.redelivered for d in taken)
    rest, none = intake.take(QUEUE_INFERENCE, "a", most=8, wait_seconds=0)
    assert [d.payload["n"] for d in rest] == [3] and none is None
    # At most `most`, and nothing at all from an empty queue (after the wait).
    for index in range(3):
        send(app, "a", {"n": index})
    assert len(intake.take(QUEUE_INFERENCE, "a", most=2, wait_seconds=0)[0]) == 2
    assert len(intake.take(QUEUE_INFERENCE, "a", most=2, wait_seconds=0.01)[0]) == 1
    assert intake.take(QUEUE_INFERENCE, "a", most=2, wait_seconds=0.01) == ([], None)


def test_finish_publishes_the_chain_next_step_with_the_result(app: Any) -> None:
    first = app.signature("a", args=({"n": 1},), queue=QUEUE_INFERENCE, priority=3)
    after = app.signature("post", queue=QUEUE_POSTPROCESS, task_id="job-post")
    chain(first, after).apply_async()
    intake = Intake(app)
    (delivery,), _ = intake.take(QUEUE_INFERENCE, "a", most=1, wait_seconds=0)
    intake.finish(delivery, {"n": 1, "found": 2})
    assert delivery.settled
    (following,), _ = intake.take(QUEUE_POSTPROCESS, "post", most=1, wait_seconds=0)
    assert following.id == "job-post"
    assert following.payload == {"n": 1, "found": 2}
    assert following.delivery_info["priority"] == 3
    # An ignored step (result None) is acknowledged and goes no further.
    chain(first, after).apply_async()
    (ignored,), _ = intake.take(QUEUE_INFERENCE, "a", most=1, wait_seconds=0)
    intake.finish(ignored, None)
    assert intake.take(QUEUE_POSTPROCESS, "post", most=1, wait_seconds=0) == ([], None)


def test_give_back_requeues_a_copy_not_marked_redelivered(app: Any) -> None:
    send(app, "a", {"n": 7})
    intake = Intake(app)
    (delivery,), _ = intake.take(QUEUE_INFERENCE, "a", most=1, wait_seconds=0)
    intake.give_back(delivery)
    intake.give_back(delivery)  # once only
    (again,), _ = intake.take(QUEUE_INFERENCE, "a", most=2, wait_seconds=0)
    assert (again.id, again.payload, again.redelivered) == (delivery.id, {"n": 7}, False)


def test_run_alone_runs_the_task_then_its_chain(app: Any) -> None:
    seen: list[Any] = []

    @app.task(name="double", bind=True)
    def double(task: Any, payload: dict[str, Any]) -> dict[str, Any]:
        seen.append((payload, task.request.delivery_info.get("routing_key")))
        return {"n": payload["n"] * 2}

    first = app.signature("double", args=({"n": 4},), queue=QUEUE_INFERENCE)
    chain(first, app.signature("post", queue=QUEUE_POSTPROCESS)).apply_async()
    intake = Intake(app)
    _, stray = intake.take(QUEUE_INFERENCE, "other", most=1, wait_seconds=0)
    assert stray is not None
    intake.run_alone(stray)
    assert seen == [({"n": 4}, QUEUE_INFERENCE)]
    (following,), _ = intake.take(QUEUE_POSTPROCESS, "post", most=1, wait_seconds=0)
    assert following.payload == {"n": 8}
