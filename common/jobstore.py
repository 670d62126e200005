"""Job records and results in Redis.

Keys (prefix ``cv`` by default; human-readable, so they browse well in RedisInsight):

- ``cv:job:<id>``: hash, one field per attribute; nested values are JSON strings.
- ``cv:result:<id>``: the result document, a JSON string.
- ``cv:jobs``: sorted set of every job id, scored by submission time (newest-first lists).
- ``cv:jobs:<state>``: the same, one set per state, for filtered lists.
- ``cv:workers``: hash, one JSON report per inference worker process (its models, and
  when the report goes stale); read on every submission, so one key, never a SCAN.
- Videos add to the job hash ``frames_total``, ``chunks_total``, per stage
  ``frames_done:<stage>`` and ``busy:<stage>`` (worker seconds), and ``progress_at``;
  ``cv:job:<id>:chunks:<stage>`` is the set of chunk indices a stage has finished (a
  redelivered chunk is counted once), ``cv:job:<id>:dispatched`` the chunks published.

Records and results expire after the configured TTL. State changes go through
``_transition``, a WATCH/MULTI transaction that refuses to leave a terminal
state, so a worker finishing late can never revive a cancelled job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from common.contract import ACTIVE_STATES, JOB_STATES, STAGES, JobState


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class JobStore:
    """Reads and writes job state; shared by the API and the workers."""

    def __init__(self, client: redis.Redis, prefix: str = "cv", ttl_seconds: int = 7 * 86400):
        # Any: redis-py's types cannot express decode_responses=True (str, not bytes).
        self.redis: Any = client
        self.prefix = prefix
        self.ttl = ttl_seconds

    @classmethod
    def from_url(cls, url: str, prefix: str, ttl_seconds: int) -> JobStore:
        client = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5
        )
        return cls(client, prefix, ttl_seconds)

    # keys -----------------------------------------------------------------
    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def result_key(self, job_id: str) -> str:
        return f"{self.prefix}:result:{job_id}"

    def index_key(self, state: str | None = None) -> str:
        return f"{self.prefix}:jobs" if state is None else f"{self.prefix}:jobs:{state}"

    def workers_key(self) -> str:
        return f"{self.prefix}:workers"

    # create / read --------------------------------------------------------
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
        """Record a new queued job; returns the record as ``get`` would."""
        submitted = time.time()
        record = {
            "id": job_id,
            "pipeline": pipeline,
            "state": "queued",
            "step": "",
            "options": json.dumps(options),
            "input": json.dumps(input_info),
            "submitted_at": datetime.fromtimestamp(submitted, UTC).isoformat(
                timespec="milliseconds"
            ),
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
        key = self.job_key(job_id)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping=record)
            pipe.expire(key, self.ttl)
            pipe.zadd(self.index_key(), {job_id: submitted})
            pipe.zadd(self.index_key("queued"), {job_id: submitted})
            pipe.execute()
        return _decode(record)

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(self.job_key(job_id))
        return _decode(raw) if raw.get("id") else None

    def state(self, job_id: str) -> str | None:
        value = self.redis.hget(self.job_key(job_id), "state")
        return str(value) if value is not None else None

    def get_result(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(self.result_key(job_id))
        return json.loads(str(raw)) if raw is not None else None

    def page(
        self, state: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of jobs, newest first, and the total matching count."""
        index = self.index_key(state)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrevrange(index, offset, offset + limit - 1)
            pipe.zcard(index)
            ids, total = pipe.execute()
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.job_key(job_id))
            raws = pipe.execute()
        records = []
        gone = []
        for job_id, raw in zip(ids, raws, strict=True):
            if raw.get("id"):
                records.append(_decode(raw))
            else:  # expired by its TTL; the janitor removes its files
                gone.append(job_id)
        if gone:
            self._unindex(gone)
        return records, int(total) - len(gone)

    # state changes ----------------------------------------------------------
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
            pipe.set(self.result_key(job_id), document, ex=self.ttl)

        return self._transition(job_id, ACTIVE_STATES, "succeeded", update, store_result)

    def fail(self, job_id: str, step: str | None, kind: str, detail: str) -> bool:
        error = {"step": step, "kind": kind, "detail": detail}

        def update(record: dict[str, Any]) -> dict[str, str]:
            return {"step": "", "finished_at": now_iso(), "error": json.dumps(error)}

        return self._transition(job_id, ACTIVE_STATES, "failed", update)

    def fail_if_stuck(self, record: dict[str, Any], limit_seconds: float) -> dict[str, Any]:
        """Fail a job whose current step started more than ``limit_seconds`` ago.

        A step past its hard time limit, or whose worker vanished without RabbitMQ
        redelivering, would otherwise stay ``running`` until the record expires.
        Returns the record as it is now.
        """
        if record["state"] != "running" or not record.get("step"):
            return record
        if record.get("frames_total"):
            return self._fail_video_if_stuck(record, limit_seconds)
        step = next((s for s in record["steps"] if s["name"] == record["step"]), None)
        if step is None or not step.get("started_at") or step.get("finished_at"):
            return record
        started = datetime.fromisoformat(step["started_at"]).timestamp()
        if time.time() - started <= limit_seconds:
            return record
        return self._fail_stuck(
            record,
            step["name"],
            f"the {step['name']} step did not finish within {limit_seconds:.0f} s",
        )

    def _fail_video_if_stuck(self, record: dict[str, Any], limit_seconds: float) -> dict[str, Any]:
        """A video is stuck when a chunk (or the finishing step) started and nothing finished
        for ``limit_seconds``. Chunks waiting in a queue behind other work are not stuck,
        as a queued image is not.
        """
        active, done = record.get("active_at"), record.get("progress_at")
        if not active or (done and done >= active):
            return record
        if time.time() - datetime.fromisoformat(active).timestamp() <= limit_seconds:
            return record
        return self._fail_stuck(
            record,
            record["step"],
            f"no chunk of the video finished within {limit_seconds:.0f} s of the last one starting",
        )

    def _fail_stuck(self, record: dict[str, Any], step: str, what: str) -> dict[str, Any]:
        """Fail a job as timed out; returns the record as it is now."""
        detail = f"{what} (its worker was stopped, killed or lost)"
        self.fail(record["id"], step, "timeout", detail)
        return self.get(record["id"]) or record

    def cancel(self, job_id: str) -> bool:
        def update(record: dict[str, Any]) -> dict[str, str]:
            return {"step": "", "finished_at": now_iso()}

        return self._transition(job_id, ACTIVE_STATES, "cancelled", update)

    def callback_url(self, job_id: str) -> str | None:
        value = self.redis.hget(self.job_key(job_id), "callback_url")
        return str(value) if value else None

    def set_notification(self, job_id: str, outcome: str) -> None:
        self.redis.eval(_HSET_IF_EXISTS, 1, self.job_key(job_id), "notification", outcome)

    def count_redelivery(self, job_id: str, step: str) -> int:
        """Count one more delivery of ``step`` after its worker died; returns the total.

        0 when the job is gone (nothing is written then: no record is recreated).
        """
        key = self.job_key(job_id)
        return int(self.redis.eval(_HINCR_IF_EXISTS, 1, key, f"redeliveries:{step}"))

    def delete(self, job_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.delete(
                self.job_key(job_id),
                self.result_key(job_id),
                self.dispatched_key(job_id),
                *(self.chunks_key(job_id, stage) for stage in STAGES),
            )
            pipe.execute()
        self._unindex([job_id])

    # videos -------------------------------------------------------------------
    def chunks_key(self, job_id: str, stage: str) -> str:
        return f"{self.job_key(job_id)}:chunks:{stage}"

    def dispatched_key(self, job_id: str) -> str:
        return f"{self.job_key(job_id)}:dispatched"

    def video_planned(self, job_id: str, frames_total: int, chunks_total: int) -> bool:
        """Record a video's size in frames and chunks (progress reads them)."""
        fields = json.dumps(
            {"frames_total": frames_total, "chunks_total": chunks_total, "progress_at": now_iso()}
        )
        return int(self.redis.eval(_HSET_MANY_IF_EXISTS, 1, self.job_key(job_id), fields)) >= 0

    def stage_started(self, job_id: str, stage: str) -> bool:
        """Mark ``stage`` running (once: later chunks keep its start). False unless active.

        ``step`` names the furthest stage started: a video's stages overlap.
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

    def chunk_done(self, job_id: str, stage: str, index: int, frames: int, seconds: float) -> int:
        """Count chunk ``index`` done in ``stage`` (once, however often it ran).

        Returns how many chunks the stage has done, or -1 when the job is no longer
        running (cancelled, failed, deleted): the chunk's work is moot then.
        """
        return int(
            self.redis.eval(
                _CHUNK_DONE,
                2,
                self.job_key(job_id),
                self.chunks_key(job_id, stage),
                index,
                frames,
                stage,
                f"{seconds:.4f}",
                now_iso(),
                self.ttl,
            )
        )

    def chunks_done(self, job_id: str, stage: str) -> int:
        return int(self.redis.scard(self.chunks_key(job_id, stage)))

    def chunk_is_done(self, job_id: str, stage: str, index: int) -> bool:
        return bool(self.redis.sismember(self.chunks_key(job_id, stage), index))

    def was_dispatched(self, job_id: str, index: int) -> bool:
        return bool(self.redis.sismember(self.dispatched_key(job_id), index))

    def mark_dispatched(self, job_id: str, index: int) -> None:
        """Note chunk ``index`` (-1: the finishing step) as published, after publishing it.

        Marking after publishing means a worker killed in between publishes it twice,
        never zero times; the chunk steps are idempotent, so twice is harmless.
        """
        key = self.dispatched_key(job_id)
        with self.redis.pipeline() as pipe:
            pipe.sadd(key, index)
            pipe.expire(key, self.ttl)
            pipe.execute()

    def _transition(
        self,
        job_id: str,
        allowed_from: Iterable[str],
        new_state: JobState,
        update: Any,
        also: Any = None,
    ) -> bool:
        key = self.job_key(job_id)
        allowed = set(allowed_from)

        def attempt(pipe: Any) -> bool:
            raw = pipe.hgetall(key)
            if not raw or raw.get("state") not in allowed:
                return False
            record = _decode(raw)
            fields = update(record)
            fields.update(state=new_state, updated_at=now_iso())
            pipe.multi()
            pipe.hset(key, mapping=fields)
            if raw["state"] != new_state:
                score = float(raw.get("submitted_ts") or time.time())
                pipe.zrem(self.index_key(raw["state"]), job_id)
                pipe.zadd(self.index_key(new_state), {job_id: score})
            if also is not None:
                also(pipe)
            return True

        return bool(self.redis.transaction(attempt, key, value_from_callable=True))

    def _unindex(self, job_ids: Sequence[str]) -> None:
        with self.redis.pipeline() as pipe:
            for index in [self.index_key()] + [self.index_key(s) for s in JOB_STATES]:
                pipe.zrem(index, *job_ids)
            pipe.execute()

    # batches ------------------------------------------------------------------
    def batch_key(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def create_batch(self, batch: dict[str, Any]) -> None:
        """A batch: one JSON document (members and their job ids), expiring with the jobs."""
        self.redis.set(self.batch_key(batch["id"]), json.dumps(batch), ex=self.ttl)

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(self.batch_key(batch_id))
        return json.loads(str(raw)) if raw is not None else None

    def states(self, job_ids: Sequence[str]) -> list[str | None]:
        """The state of each job (None once gone), in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.job_key(job_id), "state")
            return [str(v) if v is not None else None for v in pipe.execute()]

    # expiry -----------------------------------------------------------------
    def expired_ids(self, now: float | None = None, limit: int = 500) -> list[str]:
        """Ids submitted longer than the TTL ago (their records are gone or about to go)."""
        cutoff = (now if now is not None else time.time()) - self.ttl
        return [
            str(i) for i in self.redis.zrangebyscore(self.index_key(), "-inf", cutoff, 0, limit)
        ]

    def claim_janitor_run(self, every_seconds: int) -> bool:
        """True for at most one caller per period, across all processes."""
        return bool(self.redis.set(f"{self.prefix}:janitor", now_iso(), nx=True, ex=every_seconds))

    # worker reports -----------------------------------------------------------
    def report_worker(self, name: str, info: dict[str, Any], ttl_seconds: int) -> None:
        """Record a worker's report, valid for ``ttl_seconds`` unless renewed."""
        entry = {**info, "expires": time.time() + ttl_seconds}
        self.redis.hset(self.workers_key(), name, json.dumps(entry))

    def forget_worker(self, name: str) -> None:
        self.redis.hdel(self.workers_key(), name)

    def workers(self) -> list[dict[str, Any]]:
        """Reports of the workers alive now; stale ones are dropped."""
        now = time.time()
        alive: list[tuple[str, dict[str, Any]]] = []
        stale: list[tuple[str, dict[str, Any]]] = []
        for name, value in self.redis.hgetall(self.workers_key()).items():
            entry = json.loads(value)
            (alive if entry.get("expires", 0) > now else stale).append((name, entry))
        if stale:
            self.redis.hdel(self.workers_key(), *[name for name, _ in stale])
        return [entry for _, entry in sorted(alive)]

    def ping(self) -> bool:
        return bool(self.redis.ping())


# Writes to a job hash that must never recreate a deleted or expired record.
_HSET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return -1
"""
_HINCR_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HINCRBY', KEYS[1], ARGV[1], 1) end
return 0
"""

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

_JSON_FIELDS = ("options", "input", "steps", "task_ids", "artifacts", "error")


def _decode(raw: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = dict(raw)
    for name in _JSON_FIELDS:
        value = record.get(name)
        record[name] = json.loads(value) if value else None
    for name in ("step", "finished_at", "callback_url", "notification", "progress_at", "active_at"):
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
