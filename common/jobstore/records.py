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
from common.contract import DEFAULT_TENANT, JobState
from common.events import EventLog, entry
from common.jobstore.transitions import JobTransitions, decode

# A new record, unless the tenant has ``limit`` jobs queued or running already (0: no
# limit), in one step: two submissions can never both take the last slot. A batch
# member is held when its batch has ``window`` members in flight already: it goes to the
# end of the batch's held list, not to the unpublished list (it waits, it is not lost);
# otherwise it joins the batch's members in flight. Returns 0 (over the limit), 1 (to
# publish now) or 2 (held).
# KEYS: record, tenant queued, tenant running, usage, job-bytes, held list, held batches,
#       in flight, window, unpublished, then the lists to add it to.
# ARGV: limit, ttl, score, job id, bytes, batch id or "", window, then fields and values.
_CREATE = """
local limit = tonumber(ARGV[1])
if limit > 0 and redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3]) >= limit then
  return 0
end
local held = 0
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[9], ARGV[7], 'EX', ARGV[2])
  local window = tonumber(ARGV[7])
  if window > 0 and redis.call('SCARD', KEYS[8]) >= window then held = 1 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('HSET', KEYS[1], 'held', held == 1 and '1' or '')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
for i = 11, #KEYS do redis.call('ZADD', KEYS[i], ARGV[3], ARGV[4]) end
if held == 1 then
  redis.call('RPUSH', KEYS[6], ARGV[4])
  redis.call('EXPIRE', KEYS[6], ARGV[2])
  redis.call('SADD', KEYS[7], ARGV[6])
else
  redis.call('ZADD', KEYS[10], ARGV[3], ARGV[4])
  if ARGV[6] ~= '' then
    redis.call('SADD', KEYS[8], ARGV[4])
    redis.call('EXPIRE', KEYS[8], ARGV[2])
  end
end
local bytes = tonumber(ARGV[5])
if bytes > 0 then
  redis.call('HINCRBY', KEYS[4], 'bytes', bytes)
  redis.call('HINCRBY', KEYS[5], ARGV[4], bytes)
end
return 1 + held
"""
# What a job holds in storage no longer counts for its tenant. KEYS: usage, job-bytes.
_RELEASE = """
local bytes = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if bytes ~= 0 then redis.call('HINCRBY', KEYS[1], 'bytes', -bytes) end
redis.call('HDEL', KEYS[2], ARGV[1])
return bytes
"""
# A field of a job hash set, or counted up, unless the record is gone.
HSET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return -1
"""
HINCR_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HINCRBY', KEYS[1], ARGV[1], 1) end
return 0
"""


class JobRecords(JobTransitions):
    """Create, read, list, change and delete job records; shared by the API and workers."""

    def __post_init__(self) -> None:
        # Registered once: each call is an EVALSHA (redis-py reloads a flushed script).
        self._hset_if_exists = self.redis.register_script(HSET_IF_EXISTS)
        self._hincr_if_exists = self.redis.register_script(HINCR_IF_EXISTS)
        self._create = self.redis.register_script(_CREATE)
        self._release = self.redis.register_script(_RELEASE)
        self.events = EventLog(self.redis, self.keys)  # JobStore passes its own

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
        *,
        tenant: str = DEFAULT_TENANT,
        key_id: str | None = None,
        priority: str = "normal",
        active_limit: int = 0,
        batch_id: str | None = None,
        window: int = 0,
    ) -> dict[str, Any]:
        """Record a new queued job, not yet published; returns the record as ``get`` would.

        Raises ``OverLimit`` (and records nothing) when ``tenant`` has ``active_limit``
        jobs queued or running already. The upload's ``input_info["bytes"]`` counts
        towards the tenant's bytes stored. A member of batch ``batch_id`` is recorded
        ``held`` when the batch has ``window`` members in flight (0: no window): it is not
        to be published now, but when a member before it ends (``common.batching``).
        """
        submitted = time.time()
        record = {
            "id": job_id,
            "tenant": tenant,
            "key_id": key_id or "",
            "priority": priority,
            "batch_id": batch_id or "",
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
        keys = self.keys
        created = self._create(
            keys=[
                keys.job(job_id),
                keys.tenant_index(tenant, "queued"),
                keys.tenant_index(tenant, "running"),
                keys.usage(tenant),
                keys.job_bytes(tenant),
                keys.held(batch_id or "-"),
                keys.held_batches(),
                keys.in_flight(batch_id or "-"),
                keys.window(batch_id or "-"),
                keys.unpublished(),
                keys.index(),
                keys.index("queued"),
                keys.tenant_index(tenant),
            ],
            args=[
                active_limit,
                self.ttl,
                repr(submitted),
                job_id,
                int(input_info.get("bytes") or 0),
                batch_id or "",
                window,
                *(item for pair in record.items() for item in pair),
            ],
        )
        if not created:
            raise OverLimit(f"{active_limit} jobs of tenant {tenant!r} are queued or running")
        # After the script, before the first step is published: no event of this job
        # can come before it.
        data = {"pipeline": pipeline, "state": "queued", "held": created == 2}
        self.events.append(tenant, entry("job.created", job_id, batch_id, data, submitted))
        return decode({**record, "held": "1" if created == 2 else ""})

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
        raw = self.result_text(job_id)
        return json.loads(raw) if raw is not None else None

    def result_text(self, job_id: str) -> str | None:
        """The result document as stored (JSON text), for answers sent as they are."""
        raw = self.redis.get(self.keys.result(job_id))
        return str(raw) if raw is not None else None

    def callback_url(self, job_id: str) -> str | None:
        value = self.redis.hget(self.keys.job(job_id), "callback_url")
        return str(value) if value else None

    def page(
        self,
        state: str | None = None,
        limit: int = 50,
        offset: int = 0,
        tenant: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of jobs (of ``tenant``; None: all), newest first, and the total matching
        count. Reads only that tenant's lists; writes nothing."""
        index = self.keys.index(state) if tenant is None else self.keys.tenant_index(tenant, state)
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

    def expired_ids(
        self, now: float | None = None, limit: int = 500, tenant: str | None = None
    ) -> list[str]:
        """Ids (of ``tenant``'s jobs) submitted longer than the TTL ago (their records are
        gone or about to go)."""
        cutoff = (now if now is not None else time.time()) - self.ttl
        index = self.keys.index() if tenant is None else self.keys.tenant_index(tenant)
        return [str(i) for i in self.redis.zrangebyscore(index, "-inf", cutoff, 0, limit)]

    def tenant_of(self, job_id: str) -> str | None:
        value = self.redis.hget(self.keys.job(job_id), "tenant")
        return str(value) if value else (DEFAULT_TENANT if self.state(job_id) else None)

    def active(self, tenant: str) -> int:
        """The tenant's jobs queued or running now (a video counts once)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.tenant_index(tenant, "queued"))
            pipe.zcard(self.keys.tenant_index(tenant, "running"))
            return sum(int(n) for n in pipe.execute())

    def bytes_stored(self, tenant: str) -> int:
        """What the tenant's jobs hold in storage (uploads and artifacts)."""
        return int(self.redis.hget(self.keys.usage(tenant), "bytes") or 0)

    def release_bytes(self, tenant: str, job_id: str) -> int:
        """The job's files are gone: they no longer count for its tenant; returns the bytes."""
        keys = [self.keys.usage(tenant), self.keys.job_bytes(tenant)]
        return int(self._release(keys=keys, args=[job_id]))

    # fields that are not the state ---------------------------------------------------
    def set_notification(self, job_id: str, outcome: str) -> None:
        self._hset_if_exists(keys=[self.keys.job(job_id)], args=["notification", outcome])

    def count_redelivery(self, job_id: str, step: str) -> int:
        """Count one more delivery of ``step`` after its worker died; returns the total.

        0 when the job is gone (nothing is written then: no record is recreated).
        """
        key = self.keys.job(job_id)
        return int(self._hincr_if_exists(keys=[key], args=[f"redeliveries:{step}"]))

    def delete(self, job_id: str, tenant: str | None = None) -> None:
        """Remove the job's keys and list entries, and its bytes from its tenant's count."""
        tenant = tenant or self.tenant_of(job_id) or DEFAULT_TENANT
        self.redis.delete(*self.keys.of_job(job_id))
        self._unindex([job_id], tenant)
        self.release_bytes(tenant, job_id)

    def _unindex(self, job_ids: Sequence[str], tenant: str) -> None:
        lists = [*self.keys.indexes(), *self.keys.tenant_indexes(tenant), self.keys.unpublished()]
        with self.redis.pipeline() as pipe:
            for index in lists:
                pipe.zrem(index, *job_ids)
            pipe.execute()


class OverLimit(Exception):
    """The tenant has as many jobs queued or running as its limit allows."""
