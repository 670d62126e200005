"""Fair scheduling on the real RabbitMQ: a single job overtakes another tenant's queued batch.

The preprocess worker stops consuming while tenant acme's batch (priority low) and then
globex's single photo (normal) are queued; when it consumes again, RabbitMQ hands out
the higher priority first, at every stage, so the photo finishes before any member.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from common.celery_app import MAX_PRIORITY, make_celery
from common.contract import QUEUES
from common.settings import Settings
from tests.support import stack
from tests.support.api import submit
from tests.support.jobs import wait_for_job, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.workers]


def queue_info(name: str) -> dict[str, Any]:
    url = f"{stack.MANAGEMENT}/queues/{stack.VHOST}/{name}"
    info: dict[str, Any] = requests.get(url, auth=stack.broker_auth(), timeout=10).json()
    return info


def test_the_queues_are_priority_queues(workers: Any) -> None:
    for name in QUEUES:
        assert queue_info(name)["arguments"]["x-max-priority"] == MAX_PRIORITY


def test_a_single_job_overtakes_another_tenants_queued_batch(
    stack_settings: Settings, client_as: Any, assets: Path
) -> None:
    control = make_celery(stack_settings).control
    queues = control.inspect(timeout=5).active_queues() or {}
    (worker,) = [name for name, qs in queues.items() if any(q["name"] == "preprocess" for q in qs)]
    control.cancel_consumer("preprocess", destination=[worker], reply=True, timeout=5)
    try:
        wait_until(lambda: queue_info("preprocess")["consumers"] == 0, 20, "no consumer")
        photo = (assets / "zidane.jpg").read_bytes()
        files = [("files", (f"{i}.jpg", photo, "image/jpeg")) for i in range(6)]
        acme, globex = client_as("acme"), client_as("globex")
        batch = acme.post("/v1/batches", files=files, data={"pipeline": "blur-faces"}).json()
        single = submit(globex, photo, {"pipeline": "blur-faces"}).json()
        assert single["priority"] == "normal" and batch["priority"] == "low"
        wait_until(lambda: queue_info("preprocess")["messages"] == 7, 20, "all 7 queued")
    finally:
        control.add_consumer("preprocess", destination=[worker], reply=True, timeout=5)
    job = wait_for_job(lambda j: globex.get(f"/v1/jobs/{j}").json(), single["id"], 60)
    members = [
        wait_for_job(lambda j: acme.get(f"/v1/jobs/{j}").json(), item["job_id"], 120)
        for item in batch["items"]
    ]
    finished = datetime.fromisoformat(job["finished_at"])
    assert all(finished < datetime.fromisoformat(m["finished_at"]) for m in members), (
        job["finished_at"],
        [m["finished_at"] for m in members],
    )


def test_a_batch_has_at_most_its_window_in_flight(
    stack_settings: Settings, workers: Any, keys: Any, assets: Path
) -> None:
    from api.app import create_app
    from tests.support.keys import headers

    client = create_app(replace(stack_settings, batch_window=2)).test_client(
        base_url="http://localhost"
    )
    client.headers.update(headers(keys.acme))
    photo = (assets / "zidane.jpg").read_bytes()
    files = [("files", (f"{i}.jpg", photo, "image/jpeg")) for i in range(5)]
    batch = client.post("/v1/batches", files=files, data={"pipeline": "blur-faces"}).json()
    ids = [item["job_id"] for item in batch["items"]]
    jobs = [wait_for_job(lambda j: client.get(f"/v1/jobs/{j}").json(), i, 120) for i in ids]
    assert all(j["state"] == "succeeded" for j in jobs), jobs
    # From the records: a member is in flight from its first step's start to its end.
    spans = [(j["steps"][0]["started_at"], j["finished_at"]) for j in jobs]
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = now = 0
    for _, change in events:  # at equal times the end comes first (-1 < 1)
        now += change
        most = max(most, now)
    assert most == 2, spans
    # ...and in order: each started once the one two places before it had ended.
    for (_, ended), (started, _) in zip(spans, spans[2:], strict=False):
        assert started >= ended, spans
