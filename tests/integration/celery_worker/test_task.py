"""The bookkeeping every step shares (celery_worker.task), against the real Redis."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from celery_worker.task import MAX_REDELIVERIES, gave_up_after_redelivery
from common.jobstore import JobStore
from tests.support.store import new_job

pytestmark = pytest.mark.broker


def context(store: JobStore) -> Any:
    """What the bookkeeping reads of a worker's context: the store, and callbacks (none)."""
    return SimpleNamespace(store=store, ended=lambda job_id: None)


def test_a_step_whose_worker_keeps_dying_fails_the_job(store: JobStore) -> None:
    job_id = new_job(store)
    store.jobs.step_started(job_id, "inference")
    for _ in range(MAX_REDELIVERIES):
        assert not gave_up_after_redelivery(context(store), job_id, "inference")
    assert gave_up_after_redelivery(context(store), job_id, "inference")
    record = store.jobs.get(job_id)
    assert record is not None and record["state"] == "failed"
    assert record["error"]["kind"] == "worker-lost"
    assert f"died {MAX_REDELIVERIES + 1} times" in record["error"]["detail"]


def test_a_chunk_of_a_video_whose_worker_keeps_dying_fails_the_job(store: JobStore) -> None:
    job_id = new_job(store)
    for _ in range(MAX_REDELIVERIES):
        assert not gave_up_after_redelivery(context(store), job_id, "inference:chunk-3")
    assert not gave_up_after_redelivery(context(store), job_id, "inference:chunk-4")
    assert gave_up_after_redelivery(context(store), job_id, "inference:chunk-3")
    record = store.jobs.get(job_id)
    assert record is not None and record["error"]["step"] == "inference"
    assert "inference of chunk 3 died" in record["error"]["detail"]
