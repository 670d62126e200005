"""Batches: one JSON document per batch (its members and their job ids), expiring with the jobs.

A batch's progress is read from its jobs' own records (``JobRecords.states``). Only
``CV_BATCH_WINDOW`` members of a batch are in flight at once (a set in Redis); the
others are recorded (queued, counted by the quotas) but held in the batch's held list,
and each member that ends makes room for the next (``landed``, then ``fill``): a
10,000-image batch never puts 10,000 messages before anyone else's work, and two
tenants' batches share the workers. Whether a new member is held, and which held ones
fit the window, are decided in Redis scripts, so nobody overfills or starves it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from common.jobstore.keys import StorePart

# Fill the batch's window: while fewer than its window are in flight, pop the next held
# member, put it in flight and note it unpublished (so a publisher dying now leaves it
# to upkeep, never lost) and its record no longer held (ARGV[3]: the records' key
# prefix); the batch leaves the held set once its list is empty. Returns the popped ids.
# KEYS: held list, held batches, unpublished, in flight, window. ARGV: score, batch id,
# records' key prefix, ttl.
_FILL = """
local window = tonumber(redis.call('GET', KEYS[5]) or '0')
local released = {}
while window == 0 or redis.call('SCARD', KEYS[4]) < window do
  local job_id = redis.call('LPOP', KEYS[1])
  if not job_id then break end
  redis.call('ZADD', KEYS[3], ARGV[1], job_id)
  redis.call('SADD', KEYS[4], job_id)
  redis.call('EXPIRE', KEYS[4], ARGV[4])
  if redis.call('EXISTS', ARGV[3] .. job_id) == 1 then
    redis.call('HSET', ARGV[3] .. job_id, 'held', '')
  end
  table.insert(released, job_id)
end
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return released
"""


class Batches(StorePart):
    def __post_init__(self) -> None:
        self._fill = self.redis.register_script(_FILL)

    def create(self, batch: dict[str, Any]) -> None:
        counts = self.keys.batch_counts(batch["id"])
        total = sum(1 for m in batch.get("members", []) if m.get("job_id"))
        with self.redis.pipeline() as pipe:
            pipe.set(self.keys.batch(batch["id"]), json.dumps(batch), ex=self.ttl)
            pipe.hset(counts, "total", total)  # members ended so far count already
            pipe.expire(counts, self.ttl)
            pipe.execute()

    def get(self, batch_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(self.keys.batch(batch_id))
        return json.loads(str(raw)) if raw is not None else None

    def fill(self, batch_id: str) -> list[str]:
        """The held members that fit the batch's window now, in order, put in flight and
        noted as unpublished (the caller publishes them)."""
        keys = [
            self.keys.held(batch_id),
            self.keys.held_batches(),
            self.keys.unpublished(),
            self.keys.in_flight(batch_id),
            self.keys.window(batch_id),
        ]
        args = [repr(time.time()), batch_id, self.keys.job(""), self.ttl]
        return [str(job_id) for job_id in self._fill(keys=keys, args=args)]

    def landed(self, batch_id: str, job_id: str) -> None:
        """The member is no longer in flight (it ended, or never started)."""
        self.redis.srem(self.keys.in_flight(batch_id), job_id)

    def in_flight(self, batch_id: str) -> list[str]:
        return sorted(str(i) for i in self.redis.smembers(self.keys.in_flight(batch_id)))

    def held_count(self, batch_id: str) -> int:
        return int(self.redis.llen(self.keys.held(batch_id)))

    def with_held(self) -> list[str]:
        """Batches that have members held back."""
        return sorted(str(b) for b in self.redis.smembers(self.keys.held_batches()))
