"""Job records: created, read, listed and deleted (keys: ``common.jobstore.keys``).

Their state changes are in ``transitions``; ``JobRecords`` has both. Writes that are
not state changes use Lua scripts that never recreate a record deleted or expired
meanwhile.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from common.clock import iso, now_iso
from common.contract import JobState
from common.jobstore.transitions import JobTransitions, decode

# A field of a job hash set, or counted up, unless the record is gone.
_HSET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return -1
"""
_HINCR_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HINCRBY', KEYS[1], ARGV[1], 1) end
return 0
"""


class JobRecords(JobTransitions):
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
        """One page of jobs, newest first, and the total matching count. Writes nothing."""
        index = self.keys.index(state)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrevrange(index, offset, offset + limit - 1)
            pipe.zcard(index)
            ids, total = pipe.execute()
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.keys.job(job_id))
            raws = pipe.execute()
        # An id whose record Redis already expired is skipped (upkeep unindexes it).
        records = [decode(raw) for raw in raws if raw.get("id")]
        return records, int(total) - (len(ids) - len(records))

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

    def _unindex(self, job_ids: Sequence[str]) -> None:
        with self.redis.pipeline() as pipe:
            for index in [*self.keys.indexes(), self.keys.unpublished()]:
                pipe.zrem(index, *job_ids)
            pipe.execute()
