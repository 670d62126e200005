"""Job records and their state machine (keys: ``common.jobstore.keys``).

A record is created ``queued`` by the API and moves through ``running`` to one of
the terminal states. Every state change is a WATCH/MULTI transaction
(``_transition``) that refuses to leave a terminal state, so a worker finishing
late can never revive a cancelled job, and moves the id between the per-state
lists in the same transaction. Writes that are not state changes use Lua scripts
that never recreate a record deleted or expired meanwhile.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from common.clock import iso, now_iso
from common.contract import ACTIVE_STATES, JobState
from common.jobstore.keys import StorePart

# What a transition writes: the record as it is -> the fields to change.
Update = Callable[[dict[str, Any]], dict[str, str]]

_JSON_FIELDS = ("options", "input", "steps", "task_ids", "artifacts", "error")
_OPTIONAL_FIELDS = (
    "step",
    "finished_at",
    "callback_url",
    "notification",
    "progress_at",
    "active_at",
)

# A field of a job hash set, or counted up, unless the record is gone.
_HSET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return -1
"""
_HINCR_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HINCRBY', KEYS[1], ARGV[1], 1) end
return 0
"""


class JobRecords(StorePart):
    """Create, read, list, change and delete job records; shared by the API and workers."""

    def __post_init__(self) -> None:
        # Registered once: each call is an EVALSHA (redis-py reloads a flushed script).
        self._hset_if_exists = self.redis.register_script(_HSET_IF_EXISTS)
        self._hincr_if_exists = self.redis.register_script(_HINCR_IF_EXISTS)

    # create and publish ----------------------------------------------------------
    def create(
        self,
        job_id: str,
        pipeline: str,
        stages: Sequence[tuple[str, str]],
        options: dict[str, Any],
        input_info: dict[str, Any],
        task_ids: Sequence[str],
        callback_url: str | None = None,
    ) -> dict[str, Any]:
        """Record a new queued job, not yet published; returns the record as ``get`` would."""
        submitted = time.time()
        record = {
            "id": job_id,
            "pipeline": pipeline,
            "state": "queued",
            "step": "",
            "options": json.dumps(options),
            "input": json.dumps(input_info),
            "submitted_at": iso(submitted),
            "submitted_ts": repr(submitted),
            "updated_at": now_iso(),
            "finished_at": "",
            "steps": json.dumps(
                [
                    {"name": name, "queue": queue, "started_at": None, "finished_at": None}
                    for name, queue in stages
                ]
            ),
            "task_ids": json.dumps(list(task_ids)),
            "error": "",
            "artifacts": "[]",
            "callback_url": callback_url or "",
            "notification": "",
        }
        key = self.keys.job(job_id)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping=record)
            pipe.expire(key, self.ttl)
            pipe.zadd(self.keys.index(), {job_id: submitted})
            pipe.zadd(self.keys.index("queued"), {job_id: submitted})
            pipe.zadd(self.keys.unpublished(), {job_id: submitted})
            pipe.execute()
        return decode(record)

    def published(self, job_id: str) -> None:
        """The job's first step is in RabbitMQ (publisher-confirmed)."""
        self.redis.zrem(self.keys.unpublished(), job_id)

    def unpublished(self, before: float, limit: int = 500) -> list[str]:
        """Jobs recorded before the Unix time ``before`` whose publish was never confirmed."""
        key = self.keys.unpublished()
        return [str(i) for i in self.redis.zrangebyscore(key, "-inf", before, 0, limit)]

    # read ----------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(self.keys.job(job_id))
        return decode(raw) if raw.get("id") else None

    def state(self, job_id: str) -> str | None:
        value = self.redis.hget(self.keys.job(job_id), "state")
        return str(value) if value is not None else None

    def states(self, job_ids: Sequence[str]) -> list[str | None]:
        """The state of each job (None once gone), in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.keys.job(job_id), "state")
            return [str(v) if v is not None else None for v in pipe.execute()]

    def result(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(self.keys.result(job_id))
        return json.loads(str(raw)) if raw is not None else None

    def callback_url(self, job_id: str) -> str | None:
        value = self.redis.hget(self.keys.job(job_id), "callback_url")
        return str(value) if value else None

    def page(
        self, state: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of jobs, newest first, and the total matching count."""
        index = self.keys.index(state)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrevrange(index, offset, offset + limit - 1)
            pipe.zcard(index)
            ids, total = pipe.execute()
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.keys.job(job_id))
            raws = pipe.execute()
        records = []
        gone = []
        for job_id, raw in zip(ids, raws, strict=True):
            if raw.get("id"):
                records.append(decode(raw))
            else:  # expired by its TTL; upkeep removes its files
                gone.append(job_id)
        if gone:
            self._unindex(gone)
        return records, int(total) - len(gone)

    def ids_in(self, state: JobState, limit: int = 10_000) -> list[str]:
        """Ids of the jobs in ``state``, oldest first."""
        return [str(i) for i in self.redis.zrange(self.keys.index(state), 0, limit - 1)]

    def expired_ids(self, now: float | None = None, limit: int = 500) -> list[str]:
        """Ids submitted longer than the TTL ago (their records are gone or about to go)."""
        cutoff = (now if now is not None else time.time()) - self.ttl
        index = self.keys.index()
        return [str(i) for i in self.redis.zrangebyscore(index, "-inf", cutoff, 0, limit)]

    # fields that are not the state ---------------------------------------------------
    def set_notification(self, job_id: str, outcome: str) -> None:
        self._hset_if_exists(keys=[self.keys.job(job_id)], args=["notification", outcome])

    def count_redelivery(self, job_id: str, step: str) -> int:
        """Count one more delivery of ``step`` after its worker died; returns the total.

        0 when the job is gone (nothing is written then: no record is recreated).
        """
        key = self.keys.job(job_id)
        return int(self._hincr_if_exists(keys=[key], args=[f"redeliveries:{step}"]))

    def delete(self, job_id: str) -> None:
        self.redis.delete(*self.keys.of_job(job_id))
        self._unindex([job_id])

    # state changes --------------------------------------------------------------------
    def step_started(self, job_id: str, step: str) -> bool:
        """Mark ``step`` running. False when the job is gone, cancelled or failed."""

        def update(record: dict[str, Any]) -> dict[str, str]:
            steps = _mark_step(record["steps"], step, "started_at")
            return {"step": step, "steps": json.dumps(steps)}

        return self._transition(job_id, ACTIVE_STATES, "running", update)

    def step_finished(self, job_id: str, step: str) -> bool:
        def update(record: dict[str, Any]) -> dict[str, str]:
            return {"steps": json.dumps(_mark_step(record["steps"], step, "finished_at"))}

        return self._transition(job_id, ("running",), "running", update)

    def stage_started(self, job_id: str, stage: str) -> bool:
        """Mark a video's ``stage`` running (once: later chunks keep its start).

        False unless active. ``step`` names the furthest stage started: a video's
        stages overlap.
        """

        def update(record: dict[str, Any]) -> dict[str, str]:
            steps = record["steps"]
            names = [s["name"] for s in steps]
            entry = steps[names.index(stage)]
            fields: dict[str, str] = {"active_at": now_iso()}
            if not entry.get("started_at"):
                entry["started_at"] = now_iso()
                fields["steps"] = json.dumps(steps)
            current = record.get("step")
            if not current or names.index(stage) > names.index(current):
                fields["step"] = stage
            return fields

        return self._transition(job_id, ACTIVE_STATES, "running", update)

    def stage_finished(self, job_id: str, stage: str) -> bool:
        """Mark a video's ``stage`` finished (all its chunks are done)."""

        def update(record: dict[str, Any]) -> dict[str, str]:
            steps = record["steps"]
            entry = next(s for s in steps if s["name"] == stage)
            if entry.get("finished_at"):
                return {}
            entry["finished_at"] = now_iso()
            return {"steps": json.dumps(steps)}

        return self._transition(job_id, ("running",), "running", update)

    def succeed(
        self, job_id: str, step: str, result: dict[str, Any], artifacts: list[dict[str, Any]]
    ) -> bool:
        """Store the result, finish ``step`` and mark the job succeeded (unless cancelled).

        The result is written in the same transaction as the state, so a client that
        sees ``succeeded`` can always read the result.
        """
        document = json.dumps(result)

        def update(record: dict[str, Any]) -> dict[str, str]:
            return {
                "step": "",
                "finished_at": now_iso(),
                "steps": json.dumps(_mark_step(record["steps"], step, "finished_at")),
                "artifacts": json.dumps(artifacts),
            }

        def store_result(pipe: Any) -> None:
            pipe.set(self.keys.result(job_id), document, ex=self.ttl)

        return self._transition(job_id, ACTIVE_STATES, "succeeded", update, store_result)

    def fail(self, job_id: str, step: str | None, kind: str, detail: str) -> bool:
        error = {"step": step, "kind": kind, "detail": detail}

        def update(record: dict[str, Any]) -> dict[str, str]:
            return {"step": "", "finished_at": now_iso(), "error": json.dumps(error)}

        return self._transition(job_id, ACTIVE_STATES, "failed", update)

    def cancel(self, job_id: str) -> bool:
        def update(record: dict[str, Any]) -> dict[str, str]:
            return {"step": "", "finished_at": now_iso()}

        return self._transition(job_id, ACTIVE_STATES, "cancelled", update)

    def _transition(
        self,
        job_id: str,
        allowed_from: Iterable[str],
        new_state: JobState,
        update: Update,
        also: Callable[[Any], None] | None = None,
    ) -> bool:
        key = self.keys.job(job_id)
        allowed = set(allowed_from)

        def attempt(pipe: Any) -> bool:
            raw = pipe.hgetall(key)
            if not raw or raw.get("state") not in allowed:
                return False
            fields = update(decode(raw))
            fields.update(state=new_state, updated_at=now_iso())
            pipe.multi()
            pipe.hset(key, mapping=fields)
            if raw["state"] != new_state:
                score = float(raw.get("submitted_ts") or time.time())
                pipe.zrem(self.keys.index(raw["state"]), job_id)
                pipe.zadd(self.keys.index(new_state), {job_id: score})
            if also is not None:
                also(pipe)
            return True

        return bool(self.redis.transaction(attempt, key, value_from_callable=True))

    def _unindex(self, job_ids: Sequence[str]) -> None:
        with self.redis.pipeline() as pipe:
            for index in [*self.keys.indexes(), self.keys.unpublished()]:
                pipe.zrem(index, *job_ids)
            pipe.execute()


def decode(raw: dict[str, Any]) -> dict[str, Any]:
    """A job hash as Python values: JSON fields parsed, empty optional fields None."""
    record: dict[str, Any] = dict(raw)
    for name in _JSON_FIELDS:
        value = record.get(name)
        record[name] = json.loads(value) if value else None
    for name in _OPTIONAL_FIELDS:
        record[name] = record.get(name) or None
    record.pop("submitted_ts", None)
    return record


def _mark_step(steps: list[dict[str, Any]], step: str, field: str) -> list[dict[str, Any]]:
    for entry in steps:
        if entry["name"] == step:
            entry[field] = now_iso()
            if field == "started_at":
                entry["finished_at"] = None
    return steps
