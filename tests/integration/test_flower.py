"""`make flower` against the real RabbitMQ and the test stack's workers: Flower logs in to
the broker with the password file's password, sees every worker and its queue, and reads
the queues' depths from RabbitMQ's management API (the broker's user, on the test vhost)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.contract import QUEUES
from tests.support.flower import Flower, serve
from tests.support.jobs import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.workers]


@pytest.fixture
def flower(
    tmp_path: Path, stack_env: dict[str, str], workers: dict[str, subprocess.Popen[bytes]]
) -> Iterator[Flower]:
    with serve(tmp_path, stack_env) as running:
        yield running


def worker_queues(flower: Flower) -> set[str]:
    answer = flower.get("/api/workers?refresh=1")
    answer.raise_for_status()
    workers: dict[str, Any] = answer.json()
    return {queue["name"] for info in workers.values() for queue in info.get("active_queues", [])}


def test_flower_sees_the_workers_and_the_queue_depths(flower: Flower) -> None:
    assert wait_until(lambda: worker_queues(flower) >= set(QUEUES), 30, "the workers in Flower")
    answer = flower.get("/api/queues/length")
    answer.raise_for_status()
    depths = {queue["name"]: queue["messages"] for queue in answer.json()["active_queues"]}
    assert set(depths) >= set(QUEUES), depths
    assert flower.get("/api/workers", password="wrong").status_code == 401
