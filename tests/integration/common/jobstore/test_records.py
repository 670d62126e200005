"""Job records against the real Redis: round trip, transitions, lists, expiry, publishing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from celery_worker.upkeep import purge_expired
from common.jobstore import JobStore
from common.storage import Storage
from tests.support.store import new_job

pytestmark = pytest.mark.broker


def test_record_round_trip_is_readable(store: JobStore) -> None:
    job_id = new_job(store)
    record = store.jobs.get(job_id)
    assert record is not None
    assert record["state"] == "queued" and record["step"] is None
    assert record["options"] == {"a": 1}
    assert [s["name"] for s in record["steps"]] == ["preprocess", "inference", "postprocess"]
    raw = store.redis.hgetall(store.keys.job(job_id))
    assert (
        raw["state"] == "queued" and raw["pipeline"] == "detect"
    )  # plain strings for RedisInsight
    assert 0 < store.redis.ttl(store.keys.job(job_id)) <= 3600


def test_steps_then_success(store: JobStore) -> None:
    job_id = new_job(store)
    assert store.jobs.step_started(job_id, "preprocess")
    assert store.jobs.get(job_id)["step"] == "preprocess"  # type: ignore[index]
    assert store.jobs.step_finished(job_id, "preprocess")
    assert store.jobs.step_started(job_id, "inference")
    assert store.jobs.step_finished(job_id, "inference")
    assert store.jobs.step_started(job_id, "postprocess")
    assert store.jobs.succeed(job_id, "postprocess", {"answer": 42}, [{"name": "a.jpg"}])
    record = store.jobs.get(job_id)
    assert record is not None and record["state"] == "succeeded"
    assert all(s["started_at"] and s["finished_at"] for s in record["steps"])
    assert store.jobs.result(job_id) == {"answer": 42}
    assert 0 < store.redis.ttl(store.keys.result(job_id)) <= 3600


def test_terminal_states_are_final(store: JobStore) -> None:
    job_id = new_job(store)
    assert store.jobs.cancel(job_id)
    assert not store.jobs.step_started(job_id, "preprocess")
    assert not store.jobs.succeed(job_id, "postprocess", {}, [])
    assert not store.jobs.fail(job_id, "inference", "internal", "late")
    assert store.jobs.state(job_id) == "cancelled"
    assert store.jobs.result(job_id) is None


def test_failure_keeps_the_reason(store: JobStore) -> None:
    job_id = new_job(store)
    store.jobs.step_started(job_id, "preprocess")
    assert store.jobs.fail(job_id, "preprocess", "input", "corrupt")
    record = store.jobs.get(job_id)
    assert record is not None
    assert record["error"] == {"step": "preprocess", "kind": "input", "detail": "corrupt"}


def test_list_is_newest_first_paginated_and_filtered(store: JobStore) -> None:
    ids = [new_job(store) for _ in range(5)]
    store.jobs.cancel(ids[1])
    page, total = store.jobs.page(limit=2)
    assert total == 5 and [r["id"] for r in page] == ids[::-1][:2]
    page, _ = store.jobs.page(limit=2, offset=4)
    assert [r["id"] for r in page] == [ids[0]]
    cancelled, total = store.jobs.page(state="cancelled")
    assert total == 1 and cancelled[0]["id"] == ids[1]
    queued, total = store.jobs.page(state="queued")
    assert total == 4 and ids[1] not in {r["id"] for r in queued}


def test_expired_records_drop_out_of_lists(store: JobStore, tmp_path: Path) -> None:
    gone, kept = new_job(store), new_job(store)
    store.redis.delete(store.keys.job(gone))  # what the TTL does
    page, total = store.jobs.page()
    assert [r["id"] for r in page] == [kept] and total == 1
    # Reading wrote nothing; upkeep unindexes what expired.
    assert store.redis.zscore(store.keys.index(), gone) is not None
    purge_expired(store, Storage(tmp_path), now=time.time() + store.ttl + 1)
    assert store.redis.zscore(store.keys.index(), gone) is None


def test_delete_removes_everything(store: JobStore) -> None:
    job_id = new_job(store)
    store.jobs.delete(job_id)
    assert store.jobs.get(job_id) is None
    assert store.jobs.page()[1] == 0


def test_stages_of_a_video_keep_their_first_start_and_the_furthest_step(store: JobStore) -> None:
    job_id = new_job(store)
    store.jobs.stage_started(job_id, "preprocess")
    store.jobs.stage_started(job_id, "inference")
    first = store.jobs.get(job_id)["steps"][0]["started_at"]  # type: ignore[index]
    time.sleep(0.01)
    store.jobs.stage_started(job_id, "preprocess")  # a later chunk
    record = store.jobs.get(job_id)
    assert record is not None
    assert record["steps"][0]["started_at"] == first
    assert record["step"] == "inference"
    assert store.jobs.stage_finished(job_id, "preprocess")
    assert store.jobs.get(job_id)["steps"][0]["finished_at"]  # type: ignore[index]


def test_a_job_is_unpublished_until_its_publish_is_confirmed(store: JobStore) -> None:
    first, second = new_job(store), new_job(store)
    now = time.time() + 1
    assert set(store.jobs.unpublished(now)) == {first, second}
    assert store.jobs.unpublished(time.time() - 60) == []  # only those recorded before
    store.jobs.published(first)
    store.jobs.delete(second)
    assert store.jobs.unpublished(now) == []


def test_scripts_are_registered_once_and_called_by_their_sha(store: JobStore) -> None:
    def calls() -> dict[str, int]:
        stats = store.redis.info("commandstats")
        return {
            name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
            for name in ("eval", "evalsha")
        }

    job_id = new_job(store)
    before = calls()
    store.jobs.set_notification(job_id, "delivered")
    assert store.jobs.count_redelivery(job_id, "inference") == 1
    store.chunks.planned(job_id, 10, 2)
    after = calls()
    assert after["evalsha"] - before["evalsha"] >= 3
    assert after["eval"] == before["eval"]  # no script text sent
    record = store.jobs.get(job_id)
    assert record is not None and record["notification"] == "delivered"


def test_steps_of_a_batch_change_in_one_transaction_and_answer_each(store: JobStore) -> None:
    """A batch's members start and finish together; a cancelled or vanished member is
    refused alone."""
    ids = [new_job(store) for _ in range(4)]
    store.jobs.cancel(ids[1])
    gone = "0" * 32
    assert store.jobs.steps_started([*ids, gone], "inference") == [True, False, True, True, False]
    assert store.jobs.get(ids[1])["state"] == "cancelled"  # type: ignore[index]
    store.jobs.cancel(ids[3])
    assert store.jobs.steps_finished(ids, "inference") == [True, False, True, False]
    for job_id in (ids[0], ids[2]):
        record = store.jobs.get(job_id)
        assert record is not None and record["state"] == "running"
        inference = next(s for s in record["steps"] if s["name"] == "inference")
        assert inference["started_at"] and inference["finished_at"]
    assert store.jobs.steps_started([], "inference") == []


def test_a_batch_transition_written_meanwhile_is_tried_again_from_what_is_there(
    store: JobStore,
) -> None:
    """Another client cancels a member between the read and the write: the transaction
    is retried whole, and that member is refused (no late write revives it)."""
    ids = [new_job(store) for _ in range(3)]
    calls: list[str] = []

    def update(record: dict[str, object]) -> dict[str, str]:
        calls.append(str(record["id"]))
        if len(calls) == 1:
            store.jobs.cancel(ids[2])  # on another connection, after WATCH
        return {"step": "inference"}

    changed = store.jobs._transitions(ids, ("queued", "running"), "running", update)
    assert changed == [True, True, False]
    assert len(calls) == 3 + 2  # a first try of three, then the two still active
    assert [store.jobs.state(j) for j in ids] == ["running", "running", "cancelled"]
