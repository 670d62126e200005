"""Upgrading in place (common/migrate.py): old queues become priority queues with their
messages; jobs made before tenants join the default tenant, files and all."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from pathlib import Path

import amqp
import pytest
import requests
from kombu import Connection, Exchange, Queue

from common.celery_app import MAX_PRIORITY
from common.contract import QUEUES
from common.jobstore import JobStore
from common.migrate import migrate_queues, migrate_tenants
from common.settings import Settings
from common.storage import Storage
from tests.support import stack
from tests.support.keys import headers

pytestmark = pytest.mark.broker
VHOST = "cvjobs-migrate-test"


def test_queues_made_without_priorities_are_migrated_with_their_messages() -> None:
    stack.require_servers()
    stack.fresh_vhost(VHOST)
    url = stack.broker_url(VHOST)
    with Connection(url) as connection:
        old = Queue(
            "preprocess", Exchange("preprocess", "direct", durable=True), "preprocess", durable=True
        )
        producer = connection.Producer()
        for number in range(3):
            # A job's first message, as the previous version's API sent it.
            payload = {"job_id": f"{number:032x}", "input_key": f"jobs/{number:032x}/input.jpg"}
            producer.publish(
                [[payload], {}, {"n": number}],
                exchange=old.exchange,
                routing_key="preprocess",
                declare=[old],
                delivery_mode=2,
                priority=number,
                serializer="json",
            )
    settings = replace(Settings(), broker_url=url)
    moved = migrate_queues(settings)
    assert moved == {"preprocess": 3}  # the others did not exist: declared new
    api = f"{stack.MANAGEMENT}/queues/{VHOST}"
    queues = {q["name"]: q for q in requests.get(api, auth=stack.broker_auth(), timeout=10).json()}
    assert set(queues) == set(QUEUES)  # the temporary queue is gone
    assert all(q["arguments"]["x-max-priority"] == MAX_PRIORITY for q in queues.values())
    assert migrate_queues(settings) == {}  # idempotent
    with Connection(url) as connection:
        simple = connection.SimpleQueue("preprocess", no_ack=True, queue_opts={"no_declare": True})
        got = [simple.get(timeout=5) for _ in range(3)]
        simple.close()
    bodies = sorted((m.payload for m in got), key=lambda b: b[2]["n"])
    assert [b[2]["n"] for b in bodies] == [0, 1, 2]
    assert sorted(m.properties["priority"] for m in got) == [0, 1, 2]  # properties kept
    first = bodies[0][0][0]  # brought up to date for this version's workers
    assert first["tenant"] == "default" and first["priority"] == "normal"
    assert first["input_key"] == f"tenants/default/jobs/{0:032x}/input.jpg"

    # A run stopped half way left messages in the temporary queue: the next run moves them.
    with Connection(url) as connection:
        channel = connection.channel()
        channel.queue_declare("inference.migrating", durable=True, auto_delete=False)
        for number in range(2):
            channel.basic_publish(
                amqp.Message(json.dumps([[{}], {}, {"n": number}])), "", "inference.migrating"
            )
        channel.close()
    assert migrate_queues(settings) == {"inference": 2}
    queues = {q["name"]: q for q in requests.get(api, auth=stack.broker_auth(), timeout=10).json()}
    assert "inference.migrating" not in queues
    requests.delete(f"{stack.MANAGEMENT}/vhosts/{VHOST}", auth=stack.broker_auth(), timeout=10)


def test_jobs_made_before_tenants_join_the_default_tenant(store: JobStore, tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    job_id = uuid.uuid4().hex
    legacy = tmp_path / "jobs" / job_id
    (legacy / "artifacts").mkdir(parents=True)
    (legacy / "input.jpg").write_bytes(b"x" * 100)
    (legacy / "artifacts" / "blurred.jpg").write_bytes(b"y" * 10)
    now = time.time()
    record = {  # as the previous version wrote it: no tenant, no priority
        "id": job_id,
        "pipeline": "blur-faces",
        "state": "succeeded",
        "step": "",
        "options": "{}",
        "submitted_at": "2026-11-30T00:00:00+00:00",
        "submitted_ts": repr(now),
        "updated_at": "",
        "finished_at": "2026-11-30T00:00:01+00:00",
        "steps": "[]",
        "task_ids": "[]",
        "error": "",
        "callback_url": "",
        "notification": "",
        "input": json.dumps({"key": f"jobs/{job_id}/input.jpg", "kind": "image", "bytes": 100}),
        "artifacts": json.dumps(
            [{"name": "blurred.jpg", "content_type": "image/jpeg", "bytes": 10}]
        ),
    }
    store.redis.hset(store.keys.job(job_id), mapping=record)
    store.redis.zadd(store.keys.index(), {job_id: now})
    store.redis.zadd(store.keys.index("succeeded"), {job_id: now})

    assert migrate_tenants(store, storage) == 1
    assert migrate_tenants(store, storage) == 0  # idempotent
    migrated = store.jobs.get(job_id)
    assert migrated is not None and migrated["tenant"] == "default"
    assert migrated["input"]["key"] == f"tenants/default/jobs/{job_id}/input.jpg"
    assert storage.path(migrated["input"]["key"]).read_bytes() == b"x" * 100
    assert not legacy.exists()
    assert store.jobs.page(tenant="default")[0][0]["id"] == job_id
    assert store.jobs.page(state="succeeded", tenant="default")[1] == 1
    assert store.jobs.bytes_stored("default") == 110

    # The default tenant's key reads it, artifact included, through the API.
    from api.app import create_app

    settings = replace(
        Settings(),
        broker_url="memory://",
        redis_url=stack.redis_url(1),
        redis_prefix=store.keys.prefix,
        storage_dir=tmp_path,
    )
    client = create_app(settings).test_client(base_url="http://localhost")
    _, secret = store.apikeys.create("default", "migrated", "reader")
    client.headers.update(headers(secret))
    assert client.get(f"/v1/jobs/{job_id}").json()["tenant"] == "default"
    assert client.get(f"/v1/jobs/{job_id}/artifacts/blurred.jpg").content == b"y" * 10
