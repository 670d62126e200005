"""Batches: one JSON document per batch (its members and their job ids), expiring with the jobs.

A batch's progress is read from its jobs' own records (``JobRecords.states``). Only
``CV_BATCH_WINDOW`` members of a batch are in flight at once; the others are recorded
(queued, counted by the quotas) but held in the batch's held list, and each member
that ends releases the next (``release``), so a 10,000-image batch never puts 10,000
messages before anyone else's work, and two tenants' batches share the workers.
"""

from __future__ import annotations

import json
import time
from typing import Any

from common.jobstore.keys import StorePart

# Pop up to ARGV[1] held members; each is noted unpublished (score ARGV[2]) before it is
# published, so a publisher dying now leaves it to upkeep, never lost, and its record no
# longer held (ARGV[4]: the records' key prefix); the batch leaves the held set once its
# list is empty. KEYS: held list, held batches, unpublished.
_RELEASE = """
local released = {}
for _ = 1, tonumber(ARGV[1]) do
  local job_id = redis.call('LPOP', KEYS[1])
  if not job_id then break end
  redis.call('ZADD', KEYS[3], ARGV[2], job_id)
  if redis.call('EXISTS', ARGV[4] .. job_id) == 1 then
    redis.call('HSET', ARGV[4] .. job_id, 'held', '')
  end
  table.insert(released, job_id)
end
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[3]) end
return released
"""


class Batches(StorePart):
    def __post_init__(self) -> None:
        self._release = self.redis.register_script(_RELEASE)

    def create(self, batch: dict[str, Any]) -> None:
        self.redis.set(self.keys.batch(batch["id"]), json.dumps(batch), ex=self.ttl)

    def get(self, batch_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(self.keys.batch(batch_id))
        return json.loads(str(raw)) if raw is not None else None

    def release(self, batch_id: str, count: int) -> list[str]:
        """Up to ``count`` held members of the batch, in order, noted as unpublished."""
        keys = [self.keys.held(batch_id), self.keys.held_batches(), self.keys.unpublished()]
        records = self.keys.job("")
        args = [count, repr(time.time()), batch_id, records]
        return [str(job_id) for job_id in self._release(keys=keys, args=args)]

    def held_count(self, batch_id: str) -> int:
        return int(self.redis.llen(self.keys.held(batch_id)))

    def with_held(self) -> list[str]:
        """Batches that have members held back."""
        return sorted(str(b) for b in self.redis.smembers(self.keys.held_batches()))
