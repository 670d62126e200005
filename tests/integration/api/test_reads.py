"""Reading through the API never changes a job: a stuck job stays as it is until upkeep."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from api.app import create_app
from celery_worker.upkeep import fail_stuck_jobs
from common.jobstore import JobStore
from common.settings import Settings
from tests.support import stack
from tests.support.keys import headers
from tests.support.store import new_job

pytestmark = pytest.mark.broker


def test_reading_a_stuck_job_does_not_fail_it(store: JobStore, tmp_path: object) -> None:
    job_id = new_job(store)
    store.jobs.step_started(job_id, "inference")
    steps = store.jobs.get(job_id)["steps"]  # type: ignore[index]
    steps[1]["started_at"] = "2000-01-01T00:00:00+00:00"  # inference, long ago
    store.redis.hset(store.keys.job(job_id), "steps", json.dumps(steps))
    settings = replace(
        Settings(),
        broker_url="memory://",
        redis_url=stack.redis_url(1),
        redis_prefix=store.keys.prefix,
        storage_dir=tmp_path,  # type: ignore[arg-type]
    )
    client = create_app(settings).test_client(base_url="http://localhost")
    _, secret = store.apikeys.create("default", "reads", "reader")
    client.headers.update(headers(secret))
    for path in (f"/v1/jobs/{job_id}", "/v1/jobs", "/v1/jobs?state=running"):
        assert client.get(path).status_code == 200
    assert store.jobs.state(job_id) == "running"
    assert fail_stuck_jobs(store.jobs, 60) == 1  # what upkeep does
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "failed"
