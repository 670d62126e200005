"""Upgrading a running installation to tenants and priority queues, in place.

    .venv/bin/python -m common.migrate queues    # the queues, with their messages
    .venv/bin/python -m common.migrate tenants   # jobs made before tenants -> "default"

Stop the API and the workers first (``make stop`` stops the servers too: start
RabbitMQ and Redis again with ``scripts/services.sh start``), then run both, then
start everything on the new version. Both are idempotent: a second run changes
nothing.

- ``queues``: RabbitMQ refuses to re-declare a queue with other arguments, and the
  queues are now priority queues (``x-max-priority``). Each queue declared without
  it has its messages moved to a temporary queue, is deleted and declared anew, and
  gets its messages back, in order, with their properties. A job's first message
  (the one the API sent) is brought up to date on the way (tenant ``default``,
  priority ``normal``, its upload's new place); later steps' messages changed shape
  in this version, so let the inference and postprocess queues drain before
  upgrading. A run stopped half way is finished by the next one (the temporary queue
  ``<name>.migrating`` is emptied into its queue).
- ``tenants``: each job record without a tenant joins the ``default`` tenant: the
  tenant's lists, its byte count, and its storage folder (``jobs/<id>`` moves to
  ``tenants/default/jobs/<id>``; the record's input key follows).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

import amqp
from kombu import Connection

from common.celery_app import MAX_PRIORITY, queue
from common.contract import DEFAULT_TENANT, QUEUES
from common.jobstore import JobStore
from common.settings import Settings
from common.storage import Storage

PRECONDITION_FAILED = 406


def migrate_queues(settings: Settings) -> dict[str, int]:
    """Re-declare each queue made without priorities; returns the messages moved per queue."""
    moved: dict[str, int] = {}
    with Connection(settings.broker_url) as connection:
        connection.ensure_connection(max_retries=3)
        for name in QUEUES:
            if _declares(connection, name):
                left = _finish_leftover(connection, name)
                if left:
                    moved[name] = left
                continue
            moved[name] = _recreate(connection, name)
    return moved


def _finish_leftover(connection: Connection, name: str) -> int:
    """Messages an interrupted run left in ``<name>.migrating``, moved into the queue."""
    channel: Any = connection.channel()
    try:
        channel.queue_declare(f"{name}.migrating", passive=True)
    except amqp.exceptions.NotFound:
        _close(channel)
        return 0
    try:
        count = _move(channel, f"{name}.migrating", name, name, upgrade=True)
        channel.queue_delete(f"{name}.migrating")
    finally:
        _close(channel)
    return count


def _declares(connection: Connection, name: str) -> bool:
    """Whether the queue declares with today's arguments (creating it if it is missing)."""
    channel = connection.channel()
    try:
        queue(name)(channel).declare()
    except amqp.exceptions.PreconditionFailed:
        return False
    finally:
        _close(channel)
    return True


def _recreate(connection: Connection, name: str) -> int:
    channel: Any = connection.channel()
    temporary = f"{name}.migrating"
    try:
        channel.queue_declare(temporary, durable=True, auto_delete=False)
        count = _move(channel, name, "", temporary)
        channel.queue_delete(name)
        queue(name)(channel).declare()
        _move(channel, temporary, name, name, upgrade=True)
        channel.queue_delete(temporary)
    finally:
        _close(channel)
    return count


def _move(channel: Any, source: str, exchange: str, routing_key: str, upgrade: bool = False) -> int:
    """Every message of ``source`` published again (same properties), then acked; with
    ``upgrade``, first messages of jobs made before tenants brought up to date."""
    count = 0
    channel.confirm_select()  # each publish confirmed before its original is acked
    while (message := channel.basic_get(source, no_ack=False)) is not None:
        body = _upgraded(message.body) if upgrade else message.body
        copy = amqp.Message(body, **message.properties)
        channel.basic_publish(copy, exchange=exchange, routing_key=routing_key)
        channel.basic_ack(message.delivery_tag)
        count += 1
    return count


def _upgraded(body: bytes | str) -> bytes | str:
    """A Celery message (JSON: args, kwargs, embed) whose payload has no tenant yet: the
    default tenant's, at priority normal, its upload where ``tenants`` moves it."""
    try:
        args, kwargs, embed = json.loads(body)
        payload = args[0]
    except (ValueError, TypeError, IndexError, KeyError):
        return body  # not a job step's message: as it was
    if not isinstance(payload, dict) or "job_id" not in payload or "tenant" in payload:
        return body
    key = str(payload.get("input_key", ""))
    if key.startswith("jobs/"):
        payload["input_key"] = f"tenants/{DEFAULT_TENANT}/{key}"
    payload.update(tenant=DEFAULT_TENANT, priority="normal")
    return json.dumps([args, kwargs, embed])


def _close(channel: Any) -> None:
    # Closed by the broker already, when a declare was refused.
    with contextlib.suppress(OSError, amqp.exceptions.AMQPError):
        channel.close()


def migrate_tenants(store: JobStore, storage: Storage) -> int:
    """Give the default tenant every job record made before tenants; returns how many."""
    keys = store.keys
    moved = 0
    for job_id in (str(i) for i in store.redis.zrange(keys.index(), 0, -1)):
        raw = store.redis.hgetall(keys.job(job_id))
        if not raw.get("id") or raw.get("tenant"):
            continue  # gone, or made (or migrated) with a tenant
        old = storage.root / "jobs" / job_id
        new = storage.job_dir(DEFAULT_TENANT, job_id)
        if old.is_dir() and not new.exists():
            new.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old, new)
        has_files = new.is_dir()
        info = json.loads(raw.get("input") or "{}")
        if str(info.get("key", "")).startswith(f"jobs/{job_id}/"):
            info["key"] = storage.key(DEFAULT_TENANT, job_id, *info["key"].split("/")[2:])
        stored = int(info.get("bytes") or 0) + sum(
            int(a.get("bytes") or 0) for a in json.loads(raw.get("artifacts") or "[]")
        )
        stored = stored if has_files else 0  # a cancelled job's files are gone already
        score = float(raw.get("submitted_ts") or 0)
        with store.redis.pipeline() as pipe:
            pipe.hset(
                keys.job(job_id),
                mapping={"tenant": DEFAULT_TENANT, "priority": "normal", "input": json.dumps(info)},
            )
            pipe.zadd(keys.tenant_index(DEFAULT_TENANT), {job_id: score})
            pipe.zadd(keys.tenant_index(DEFAULT_TENANT, raw["state"]), {job_id: score})
            if stored:
                pipe.hincrby(keys.usage(DEFAULT_TENANT), "bytes", stored)
                pipe.hset(keys.job_bytes(DEFAULT_TENANT), job_id, stored)
            pipe.execute()
        moved += 1
    return moved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.migrate", description=__doc__)
    parser.add_argument("what", choices=("queues", "tenants"))
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.what == "queues":
        moved = migrate_queues(settings)
        for name, count in moved.items():
            print(f"queue {name}: declared with x-max-priority {MAX_PRIORITY}, {count} kept")
        print("queues: up to date" if not moved else f"queues: {len(moved)} migrated")
    else:
        store = JobStore.from_url(settings.redis_url, settings.redis_prefix, 1)
        _, secret = store.tenants.ensure(DEFAULT_TENANT)
        if secret:
            print(f"tenant {DEFAULT_TENANT}: callback signing secret (shown once): {secret}")
        count = migrate_tenants(store, Storage(settings.resolve(settings.storage_dir)))
        print(f"tenants: {count} jobs made before tenants now belong to {DEFAULT_TENANT!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
