"""The queues as RabbitMQ sees them while the workers run: durable, consumed, prefetch 1."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.support.jobs import wait_until
from tests.support.stack import MANAGEMENT, VHOST, broker_auth

pytestmark = [pytest.mark.broker, pytest.mark.workers]


def queues() -> dict[str, dict[str, Any]]:
    answer = requests.get(f"{MANAGEMENT}/queues/{VHOST}", auth=broker_auth(), timeout=10)
    answer.raise_for_status()
    return {q["name"]: q for q in answer.json()}


def test_each_step_queue_is_durable_and_consumed(workers: Any) -> None:
    found = wait_until(
        lambda: (
            (q := queues())
            and all(
                q.get(n, {}).get("consumers") for n in ("preprocess", "inference", "postprocess")
            )
            and q
        ),
        30,
        "the management API to show one consumer per queue",
    )
    for name in ("preprocess", "inference", "postprocess"):
        assert found[name]["durable"] is True
        assert found[name]["auto_delete"] is False
        assert found[name]["consumers"] == 1


def test_inference_consumer_takes_one_message_at_a_time(workers: Any) -> None:
    answer = requests.get(f"{MANAGEMENT}/consumers/{VHOST}", auth=broker_auth(), timeout=10)
    answer.raise_for_status()
    channel = next(
        c["channel_details"]["name"] for c in answer.json() if c["queue"]["name"] == "inference"
    )
    channels = requests.get(f"{MANAGEMENT}/channels", auth=broker_auth(), timeout=10).json()
    qos = next(c for c in channels if c["name"] == channel)
    # Celery sets the limit on the whole channel (global QoS), not per consumer.
    assert (qos["global_prefetch_count"], qos["prefetch_count"]) == (1, 0)


def test_messages_are_persistent(api_client: Any, assets: Any) -> None:
    """Publish to a queue nobody consumes and read the message back: delivery_mode 2."""
    from kombu import Connection

    from api.services import EXTENSION_KEY

    celery = api_client.app.app.extensions[EXTENSION_KEY].celery
    with Connection(celery.conf.broker_url) as conn:
        probe = conn.SimpleQueue(
            "persistence-probe", queue_opts={"durable": False, "auto_delete": True}
        )
        celery.send_task("cv.probe", args=(), queue=probe.queue, routing_key="persistence-probe")
        message = probe.get(timeout=5)
        assert message.delivery_info["routing_key"] == "persistence-probe"
        assert message.properties["delivery_mode"] == 2
        message.ack()
        probe.close()
