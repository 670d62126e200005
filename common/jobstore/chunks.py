"""The chunk ledger of video jobs: which chunks each stage finished, and which were published.

A video's chunks run as independent chains, redelivered when a worker dies and
sometimes published twice; the ledger makes each chunk count once per stage however
often it ran (``done``), and lets a chunk be published at most once per job, give
or take the crash window (``mark_dispatched``). Keys: ``common.jobstore.keys``.
"""

from __future__ import annotations

import json

from common.clock import now_iso
from common.contract import STAGES
from common.events import EventLog
from common.jobstore.keys import StorePart

# Several fields of a job hash at once (a JSON object), never recreating a deleted record.
_HSET_MANY_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local fields = cjson.decode(ARGV[1])
for name, value in pairs(fields) do redis.call('HSET', KEYS[1], name, tostring(value)) end
return 1
"""
# A chunk finished a stage: counted once per chunk index, with its frames and seconds.
_CHUNK_DONE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return -1 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'frames_done:' .. ARGV[3], ARGV[2])
  redis.call('HINCRBYFLOAT', KEYS[1], 'busy:' .. ARGV[3], ARGV[4])
end
redis.call('HSET', KEYS[1], 'progress_at', ARGV[5])
return redis.call('SCARD', KEYS[2])
"""


class ChunkLedger(StorePart):
    events: EventLog | None = None  # JobStore passes its own (video progress events)

    def __post_init__(self) -> None:
        self._hset_many_if_exists = self.redis.register_script(_HSET_MANY_IF_EXISTS)
        self._chunk_done = self.redis.register_script(_CHUNK_DONE)

    def planned(self, job_id: str, frames_total: int, chunks_total: int) -> bool:
        """Record a video's size in frames and chunks (progress reads them)."""
        fields = json.dumps(
            {"frames_total": frames_total, "chunks_total": chunks_total, "progress_at": now_iso()}
        )
        return int(self._hset_many_if_exists(keys=[self.keys.job(job_id)], args=[fields])) >= 0

    def done(self, job_id: str, stage: str, index: int, frames: int, seconds: float) -> int:
        """Count chunk ``index`` done in ``stage`` (once, however often it ran).

        Returns how many chunks the stage has done, or -1 when the job is no longer
        running (cancelled, failed, deleted): the chunk's work is moot then.
        """
        done = int(
            self._chunk_done(
                keys=[self.keys.job(job_id), self.keys.chunks(job_id, stage)],
                args=[index, frames, stage, f"{seconds:.4f}", now_iso(), self.ttl],
            )
        )
        if done >= 0 and stage == STAGES[-1] and self.events is not None:
            # Frames are done once out of the last stage; one event a job per half second.
            record = self.redis.hgetall(self.keys.job(job_id))
            if record.get("id"):
                self.events.progress(record)
        return done

    def count(self, job_id: str, stage: str) -> int:
        """How many chunks ``stage`` has done."""
        return int(self.redis.scard(self.keys.chunks(job_id, stage)))

    def is_done(self, job_id: str, stage: str, index: int) -> bool:
        return bool(self.redis.sismember(self.keys.chunks(job_id, stage), index))

    def was_dispatched(self, job_id: str, index: int) -> bool:
        return bool(self.redis.sismember(self.keys.dispatched(job_id), index))

    def mark_dispatched(self, job_id: str, index: int) -> None:
        """Note chunk ``index`` (-1: the finishing step) as published, after publishing it.

        Marking after publishing means a worker killed in between publishes it twice,
        never zero times; the chunk steps are idempotent, so twice is harmless.
        """
        key = self.keys.dispatched(job_id)
        with self.redis.pipeline() as pipe:
            pipe.sadd(key, index)
            pipe.expire(key, self.ttl)
            pipe.execute()
