"""Job events against the real Redis: written with each change, ids, replay, caps,
tenants apart, and the API's hub reading them (one reader, many subscribers)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from api.auth import Authenticator
from api.events import EventHub
from common.events import EventLog, Selection, entry, id_key
from common.jobstore import JobStore
from tests.support.keys import StaticKeys
from tests.support.stack import redis_client, redis_url, require_servers
from tests.support.store import new_job

pytestmark = pytest.mark.broker


@pytest.fixture
def events_store() -> Iterator[JobStore]:
    require_servers()
    client = redis_client(1)
    prefix = f"cvtest-events-{uuid.uuid4().hex[:8]}"
    yield JobStore(client, prefix, 3600, events_retention_seconds=60, events_max_per_tenant=50)
    keys = list(client.scan_iter(match=prefix + ":*"))
    if keys:
        client.delete(*keys)


def types(store: JobStore, tenant: str = "default") -> list[str]:
    return [e.type for e in store.events.read(tenant)]


def test_a_jobs_changes_are_its_events_in_order(events_store: JobStore) -> None:
    store = events_store
    job_id = new_job(store)
    for step in ("preprocess", "inference"):
        assert store.jobs.step_started(job_id, step)
        assert store.jobs.step_finished(job_id, step)
    assert store.jobs.step_started(job_id, "postprocess")
    assert store.jobs.succeed(job_id, "postprocess", {"ok": 1}, [])
    events = store.events.read("default")
    assert [e.type for e in events] == [
        "job.created",
        *["step.started", "step.finished"] * 3,
        "job.succeeded",
    ]
    assert all(e.job == job_id for e in events)
    assert [id_key(e.id) for e in events] == sorted(id_key(e.id) for e in events)
    finished = [e.data for e in events if e.type == "step.finished"]
    assert [d["step"] for d in finished] == ["preprocess", "inference", "postprocess"]
    assert all(isinstance(d["seconds"], float) and d["seconds"] >= 0 for d in finished)
    assert events[0].data == {"pipeline": "detect", "state": "queued", "held": False}
    assert abs(events[-1].at - time.time()) < 5


def test_a_videos_last_stage_is_reported_finished_once(events_store: JobStore) -> None:
    store = events_store
    job_id = new_job(store)
    for stage in ("preprocess", "inference", "postprocess"):
        assert store.jobs.stage_started(job_id, stage)
        assert store.jobs.stage_finished(job_id, stage)  # its last chunk ended
    # ...then the finishing step stores the result.
    assert store.jobs.succeed(job_id, "postprocess", {"ok": 1}, [])
    events = store.events.read("default")
    finished = [e.data["step"] for e in events if e.type == "step.finished"]
    assert finished == ["preprocess", "inference", "postprocess"]
    assert events[-1].type == "job.succeeded"


def test_failure_carries_its_kind_and_refused_changes_write_nothing(
    events_store: JobStore,
) -> None:
    store = events_store
    job_id = new_job(store)
    assert store.jobs.step_started(job_id, "preprocess")
    assert store.jobs.fail(job_id, "preprocess", "input", "not an image")
    assert not store.jobs.step_started(job_id, "inference")  # terminal: refused
    assert not store.jobs.cancel(job_id)
    events = store.events.read("default")
    assert [e.type for e in events] == ["job.created", "step.started", "job.failed"]
    assert events[-1].data == {"step": "preprocess", "kind": "input", "detail": "not an image"}


def test_replay_after_an_id_gives_exactly_what_followed(events_store: JobStore) -> None:
    store = events_store
    jobs = [new_job(store) for _ in range(5)]
    everything = store.events.read("default")
    middle = everything[2].id
    assert [e.job for e in store.events.read("default", middle)] == jobs[3:]
    assert store.events.read("default", everything[-1].id) == []
    assert store.events.last_id("default") == everything[-1].id


def test_streams_are_capped_by_length_and_expire(events_store: JobStore) -> None:
    store = events_store
    for _ in range(400):
        store.events.append("default", entry("job.created", uuid.uuid4().hex, None, {}))
    # MAXLEN ~ 50: Redis trims whole nodes (100 entries by default), never below 50.
    length = store.redis.xlen(store.keys.events("default"))
    assert 50 <= length < 250
    assert 0 < store.redis.ttl(store.keys.events("default")) <= 60


def test_old_events_are_trimmed_by_age(events_store: JobStore) -> None:
    store = events_store
    log = EventLog(store.redis, store.keys, retention_seconds=1, max_len=100_000)
    stream = store.keys.events("aged")
    # 300 events "two seconds old" (explicit ids), then one now: MINID drops the old nodes.
    old_ms = int((time.time() - 2) * 1000)
    for n in range(300):
        store.redis.xadd(stream, entry("job.created", "old", None, {}), id=f"{old_ms}-{n + 1}")
    log.append("aged", entry("job.created", "new", None, {}))
    left = [e.job for e in log.read("aged")]
    assert left[-1] == "new" and len(left) < 300


def test_tenants_streams_are_apart(events_store: JobStore) -> None:
    store = events_store
    ours = store.jobs.create(
        "a" * 32, "detect", [("preprocess", "preprocess")], {}, {}, [], tenant="acme"
    )
    theirs = store.jobs.create(
        "b" * 32, "detect", [("preprocess", "preprocess")], {}, {}, [], tenant="globex"
    )
    assert [e.job for e in store.events.read("acme")] == [ours["id"]]
    assert [e.job for e in store.events.read("globex")] == [theirs["id"]]


def test_batch_progress_counts_members_that_ended(events_store: JobStore) -> None:
    store = events_store
    batch_id = uuid.uuid4().hex
    ids = []
    for _ in range(3):
        job_id = uuid.uuid4().hex
        store.jobs.create(
            job_id, "detect", [("preprocess", "preprocess")], {}, {}, [], batch_id=batch_id
        )
        ids.append(job_id)
    assert store.jobs.cancel(ids[0])  # before the batch document exists: total unknown
    store.batches.create({"id": batch_id, "members": [{"job_id": i} for i in ids]})
    assert store.jobs.step_started(ids[1], "preprocess")
    assert store.jobs.fail(ids[1], "preprocess", "input", "x")
    progress = [e for e in store.events.read("default") if e.type == "batch.progress"]
    assert [p.data["ended"] for p in progress] == [1, 2]
    assert progress[0].data["total"] is None and progress[1].data["total"] == 3
    assert progress[1].data["counts"] == {"cancelled": 1, "failed": 1}
    assert all(p.batch == batch_id for p in progress)


def test_video_progress_is_at_most_two_a_second(events_store: JobStore) -> None:
    store = events_store
    job_id = new_job(store, input_info={"key": "k", "bytes": 3})
    assert store.jobs.step_started(job_id, "preprocess")
    assert store.chunks.planned(job_id, frames_total=100, chunks_total=10)
    for index in range(10):
        assert store.chunks.done(job_id, "postprocess", index, 10, 0.1) == index + 1
    progress = [e for e in store.events.read("default") if e.type == "job.progress"]
    assert len(progress) == 1  # ten chunks within well under half a second
    data = progress[0].data
    assert data["frames_done"] == 10 and data["frames_total"] == 100 and data["percent"] == 10.0
    assert data["frames_per_second"] > 0 and data["eta_seconds"] >= 0
    time.sleep(0.6)
    store.chunks.done(job_id, "postprocess", 10, 0, 0.1)
    assert len([e for e in store.events.read("default") if e.type == "job.progress"]) == 2


# --- the API's hub on the real Redis ---------------------------------------------------


def test_hub_fans_out_one_read_to_many_and_hands_over_from_replay(
    events_store: JobStore,
) -> None:
    store = events_store
    before = [new_job(store) for _ in range(3)]
    first = store.events.read("default")[0].id

    async def scenario() -> tuple[list[str], list[list[str]]]:
        url = redis_url(1)
        reader = aioredis.Redis.from_url(url, decode_responses=True, single_connection_client=True)
        client = aioredis.Redis.from_url(url, decode_responses=True)
        hub = EventHub(store.keys, Authenticator(StaticKeys(), {}, 1.0), reader, client)
        try:
            joined = [
                await hub.subscribe("default", Selection(everything=True), None) for _ in range(50)
            ]
            replayed = [e.job for e in await hub.replay("default", first, joined[0][1])]
            await asyncio.to_thread(lambda: [new_job(store) for _ in range(3)])
            await asyncio.to_thread(
                store.jobs.create, uuid.uuid4().hex, "detect", [], {}, {}, [], tenant="globex"
            )
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len(joined[-1][0].pending) < 3:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # nothing more (globex's job) arrives
            return replayed, [[e.job for e in s.take()] for s, _ in joined]
        finally:
            await hub.aclose()

    replayed, got = asyncio.run(scenario())
    assert replayed == before[1:]
    later = [e.job for e in store.events.read("default")][3:]
    assert len(later) == 3
    assert all(g == later for g in got)
