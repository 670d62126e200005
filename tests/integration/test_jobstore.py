"""The Redis job store against the real Redis: records, lists, transitions, expiry."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_worker.janitor import purge_expired
from common.jobstore import JobStore
from common.storage import Storage
from tests.support.catalogue import PIPELINES
from tests.support.stack import require_servers

pytestmark = pytest.mark.broker


@pytest.fixture
def store() -> Iterator[JobStore]:
    require_servers()
    client = redis.Redis(host="127.0.0.1", port=6379, db=1, decode_responses=True)
    prefix = f"cvtest-store-{uuid.uuid4().hex[:8]}"
    yield JobStore(client, prefix, ttl_seconds=3600)
    keys = list(client.scan_iter(match=prefix + ":*"))
    if keys:
        client.delete(*keys)


def new_job(store: JobStore, pipeline: str = "detect") -> str:
    job_id = uuid.uuid4().hex
    stages = [(s.stage, s.queue) for s in PIPELINES[pipeline].steps]
    store.create(job_id, pipeline, stages, {"a": 1}, {"key": "k", "bytes": 3}, ["t1", "t2", "t3"])
    return job_id


def test_record_round_trip_is_readable(store: JobStore) -> None:
    job_id = new_job(store)
    record = store.get(job_id)
    assert record is not None
    assert record["state"] == "queued" and record["step"] is None
    assert record["options"] == {"a": 1}
    assert [s["name"] for s in record["steps"]] == ["preprocess", "inference", "postprocess"]
    raw = store.redis.hgetall(store.job_key(job_id))
    assert (
        raw["state"] == "queued" and raw["pipeline"] == "detect"
    )  # plain strings for RedisInsight
    assert 0 < store.redis.ttl(store.job_key(job_id)) <= 3600


def test_steps_then_success(store: JobStore) -> None:
    job_id = new_job(store)
    assert store.step_started(job_id, "preprocess")
    assert store.get(job_id)["step"] == "preprocess"  # type: ignore[index]
    assert store.step_finished(job_id, "preprocess")
    assert store.step_started(job_id, "inference")
    assert store.step_finished(job_id, "inference")
    assert store.step_started(job_id, "postprocess")
    assert store.succeed(job_id, "postprocess", {"answer": 42}, [{"name": "a.jpg"}])
    record = store.get(job_id)
    assert record is not None and record["state"] == "succeeded"
    assert all(s["started_at"] and s["finished_at"] for s in record["steps"])
    assert store.get_result(job_id) == {"answer": 42}
    assert 0 < store.redis.ttl(store.result_key(job_id)) <= 3600


def test_terminal_states_are_final(store: JobStore) -> None:
    job_id = new_job(store)
    assert store.cancel(job_id)
    assert not store.step_started(job_id, "preprocess")
    assert not store.succeed(job_id, "postprocess", {}, [])
    assert not store.fail(job_id, "inference", "internal", "late")
    assert store.state(job_id) == "cancelled"
    assert store.get_result(job_id) is None


def test_failure_keeps_the_reason(store: JobStore) -> None:
    job_id = new_job(store)
    store.step_started(job_id, "preprocess")
    assert store.fail(job_id, "preprocess", "input", "corrupt")
    record = store.get(job_id)
    assert record is not None
    assert record["error"] == {"step": "preprocess", "kind": "input", "detail": "corrupt"}


def test_list_is_newest_first_paginated_and_filtered(store: JobStore) -> None:
    ids = [new_job(store) for _ in range(5)]
    store.cancel(ids[1])
    page, total = store.page(limit=2)
    assert total == 5 and [r["id"] for r in page] == ids[::-1][:2]
    page, _ = store.page(limit=2, offset=4)
    assert [r["id"] for r in page] == [ids[0]]
    cancelled, total = store.page(state="cancelled")
    assert total == 1 and cancelled[0]["id"] == ids[1]
    queued, total = store.page(state="queued")
    assert total == 4 and ids[1] not in {r["id"] for r in queued}


def test_expired_records_drop_out_of_lists(store: JobStore) -> None:
    gone, kept = new_job(store), new_job(store)
    store.redis.delete(store.job_key(gone))  # what the TTL does
    page, total = store.page()
    assert [r["id"] for r in page] == [kept] and total == 1
    assert store.redis.zscore(store.index_key(), gone) is None


def test_janitor_removes_expired_jobs_and_their_files(store: JobStore, tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    old, fresh = new_job(store), new_job(store)
    for job_id in (old, fresh):
        storage.write_bytes(storage.key(job_id, "input.jpg"), b"x")
    store.redis.zadd(store.index_key(), {old: time.time() - 7200})
    assert purge_expired(store, storage) == 1
    assert not storage.job_dir(old).exists() and store.get(old) is None
    assert storage.job_dir(fresh).exists() and store.get(fresh) is not None


def test_janitor_removes_upload_scratch_files_a_day_old(store: JobStore, tmp_path: Path) -> None:
    import os

    storage = Storage(tmp_path)
    storage.tmp_dir.mkdir()
    stale, current = storage.tmp_dir / "stale", storage.tmp_dir / "current"
    stale.write_bytes(b"x")
    current.write_bytes(b"y")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    purge_expired(store, storage)
    assert not stale.exists() and current.exists()


def test_a_chunk_of_a_video_whose_worker_keeps_dying_fails_the_job(store: JobStore) -> None:
    from celery_worker.steps import MAX_REDELIVERIES, gave_up_after_redelivery

    job_id = new_job(store)
    for _ in range(MAX_REDELIVERIES):
        assert not gave_up_after_redelivery(store, job_id, "inference:chunk-3")
    assert not gave_up_after_redelivery(store, job_id, "inference:chunk-4")
    assert gave_up_after_redelivery(store, job_id, "inference:chunk-3")
    record = store.get(job_id)
    assert record is not None and record["error"]["step"] == "inference"
    assert "inference of chunk 3 died" in record["error"]["detail"]


def test_delete_removes_everything(store: JobStore) -> None:
    job_id = new_job(store)
    store.delete(job_id)
    assert store.get(job_id) is None
    assert store.page()[1] == 0


def test_janitor_runs_once_per_period(store: JobStore) -> None:
    assert store.claim_janitor_run(60)
    assert not store.claim_janitor_run(60)


def test_a_step_whose_worker_keeps_dying_fails_the_job(store: JobStore) -> None:
    from celery_worker.steps import MAX_REDELIVERIES, gave_up_after_redelivery

    job_id = new_job(store)
    store.step_started(job_id, "inference")
    for _ in range(MAX_REDELIVERIES):
        assert not gave_up_after_redelivery(store, job_id, "inference")
    assert gave_up_after_redelivery(store, job_id, "inference")
    record = store.get(job_id)
    assert record is not None and record["state"] == "failed"
    assert record["error"]["kind"] == "worker-lost"
    assert f"died {MAX_REDELIVERIES + 1} times" in record["error"]["detail"]


def test_a_chunk_is_counted_once_however_often_it_runs(store: JobStore) -> None:
    job_id = new_job(store)
    assert store.video_planned(job_id, frames_total=20, chunks_total=3)
    assert store.stage_started(job_id, "inference")
    assert [store.chunk_done(job_id, "inference", i, 8, 0.5) for i in (0, 1, 1, 0)] == [1, 2, 2, 2]
    assert store.chunk_done(job_id, "inference", 2, 4, 0.25) == 3
    record = store.get(job_id)
    assert record is not None
    assert record["frames_total"] == "20" and record["chunks_total"] == "3"
    assert record["frames_done:inference"] == "20"
    assert float(record["busy:inference"]) == pytest.approx(1.25)
    assert record["progress_at"] and record["step"] == "inference"
    assert store.chunk_is_done(job_id, "inference", 2)
    assert not store.chunk_is_done(job_id, "postprocess", 0)


def test_stages_of_a_video_keep_their_first_start_and_the_furthest_step(store: JobStore) -> None:
    job_id = new_job(store)
    store.stage_started(job_id, "preprocess")
    store.stage_started(job_id, "inference")
    first = store.get(job_id)["steps"][0]["started_at"]  # type: ignore[index]
    time.sleep(0.01)
    store.stage_started(job_id, "preprocess")  # a later chunk
    record = store.get(job_id)
    assert record is not None
    assert record["steps"][0]["started_at"] == first
    assert record["step"] == "inference"
    assert store.stage_finished(job_id, "preprocess")
    assert store.get(job_id)["steps"][0]["finished_at"]  # type: ignore[index]


def test_chunk_writes_never_recreate_a_deleted_job(store: JobStore) -> None:
    job_id = new_job(store)
    store.mark_dispatched(job_id, 0)
    store.chunk_done(job_id, "preprocess", 0, 8, 0.1)
    store.delete(job_id)
    assert store.chunk_done(job_id, "preprocess", 1, 8, 0.1) == -1
    assert not store.video_planned(job_id, 10, 2)
    assert store.redis.exists(store.job_key(job_id)) == 0
    assert not store.was_dispatched(job_id, 0)
    assert store.redis.exists(store.chunks_key(job_id, "preprocess")) == 0


def test_a_stalled_video_is_failed_but_one_waiting_in_a_queue_is_not(store: JobStore) -> None:
    job_id = new_job(store)
    store.stage_started(job_id, "preprocess")
    store.video_planned(job_id, frames_total=16, chunks_total=2)
    old = "2000-01-01T00:00:00+00:00"

    def aged(**fields: str) -> dict[str, Any]:
        record = store.get(job_id)
        assert record is not None
        return {**record, **fields}

    # Planned, chunks waiting behind other work for ages: not stuck (as a queued image).
    assert store.fail_if_stuck(aged(active_at=old), 60)["state"] == "running"
    store.stage_started(job_id, "inference")  # a chunk starts now
    assert store.fail_if_stuck(aged(), 60)["state"] == "running"
    store.chunk_done(job_id, "inference", 0, 8, 0.1)
    # Started long ago, something finished since: alive.
    assert store.fail_if_stuck(aged(active_at=old), 60)["state"] == "running"
    # A chunk (or the finish) started long ago and nothing finished since: stuck.
    stuck = store.fail_if_stuck(aged(active_at="2000-01-01T00:01:00+00:00", progress_at=old), 60)
    assert stuck["state"] == "failed" and stuck["error"]["kind"] == "timeout"
