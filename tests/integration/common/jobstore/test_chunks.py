"""The chunk ledger of video jobs against the real Redis."""

from __future__ import annotations

import pytest

from common.jobstore import JobStore
from tests.support.store import new_job

pytestmark = pytest.mark.broker


def test_a_chunk_is_counted_once_however_often_it_runs(store: JobStore) -> None:
    job_id = new_job(store)
    assert store.chunks.planned(job_id, frames_total=20, chunks_total=3)
    assert store.jobs.stage_started(job_id, "inference")
    assert [store.chunks.done(job_id, "inference", i, 8, 0.5) for i in (0, 1, 1, 0)] == [1, 2, 2, 2]
    assert store.chunks.done(job_id, "inference", 2, 4, 0.25) == 3
    record = store.jobs.get(job_id)
    assert record is not None
    assert record["frames_total"] == "20" and record["chunks_total"] == "3"
    assert record["frames_done:inference"] == "20"
    assert float(record["busy:inference"]) == pytest.approx(1.25)
    assert record["progress_at"] and record["step"] == "inference"
    assert store.chunks.is_done(job_id, "inference", 2)
    assert not store.chunks.is_done(job_id, "postprocess", 0)


def test_chunk_writes_never_recreate_a_deleted_job(store: JobStore) -> None:
    job_id = new_job(store)
    store.chunks.mark_dispatched(job_id, 0)
    store.chunks.done(job_id, "preprocess", 0, 8, 0.1)
    store.jobs.delete(job_id)
    assert store.chunks.done(job_id, "preprocess", 1, 8, 0.1) == -1
    assert not store.chunks.planned(job_id, 10, 2)
    assert store.redis.exists(store.keys.job(job_id)) == 0
    assert not store.chunks.was_dispatched(job_id, 0)
    assert store.redis.exists(store.keys.chunks(job_id, "preprocess")) == 0
