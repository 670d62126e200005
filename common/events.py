"""Job events: one capped Redis Stream per tenant, written where a job's state changes.

The job store appends an event in the same transaction as the change it reports
(``JobTransitions._transition``), or right after it (a job created by a Lua script, a
batch's progress, a video's progress): the stream is the order the changes happened in.
The API's push endpoints (``api.events``) read it: live, one reader per API process,
and on reconnection from a ``Last-Event-ID`` onwards.

==================  ============================================================
type                data
==================  ============================================================
``job.created``     ``pipeline``, ``state`` (``queued``), ``held`` (a held batch member)
``step.started``    ``step``
``step.finished``   ``step``, ``seconds``
``job.progress``    videos: ``frames_done``, ``frames_total``, ``percent``,
                    ``frames_per_second``, ``eta_seconds`` (at most one per job per
                    ``PROGRESS_EVERY_SECONDS``)
``job.succeeded``   (nothing more)
``job.failed``      ``step``, ``kind`` (the error kind), ``detail``
``job.cancelled``   (nothing more)
``batch.progress``  ``state`` of the member that ended, ``ended``, ``total``
                    (None until the batch is recorded), ``counts`` by state
==================  ============================================================

Every event has the stream entry's id (``<ms>-<seq>``): ids grow, so a client that
reconnects with the last id it saw gets exactly what followed. Entries hold ``type``,
``job``, ``batch`` (or ""), ``at`` (Unix seconds when the change was written) and
``data`` (JSON), readable in RedisInsight. A stream keeps ``retention_seconds`` of
events and at most ``max_len`` (both approximate, as Redis trims whole nodes), and
expires when its tenant stays quiet that long.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

EVENT_TYPES = (
    "job.created",
    "step.started",
    "step.finished",
    "job.progress",
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "batch.progress",
)
TERMINAL_EVENTS = {
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
}
PROGRESS_EVERY_SECONDS = 0.5
_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")

# A batch member ended: count it by state, and append the batch's progress.
# KEYS: the batch's counts hash, the tenant's stream. ARGV: state, job id, batch id, at,
# ttl, max length, min id.
_BATCH_PROGRESS = """
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
local raw = redis.call('HGETALL', KEYS[1])
local counts, ended, total = {}, 0, cjson.null
for i = 1, #raw, 2 do
  if raw[i] == 'total' then total = tonumber(raw[i + 1])
  else counts[raw[i]] = tonumber(raw[i + 1]); ended = ended + tonumber(raw[i + 1]) end
end
local data = cjson.encode({state = ARGV[1], ended = ended, total = total, counts = counts})
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'type', 'batch.progress',
  'job', ARGV[2], 'batch', ARGV[3], 'at', ARGV[4], 'data', data)
redis.call('XTRIM', KEYS[2], 'MINID', '~', ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return id
"""
# At most one progress event per job per period: the first caller of the period appends.
# KEYS: the job's tick key, the tenant's stream. ARGV: period ms, type fields..., ttl,
# max length, min id (the last three first).
_PROGRESS = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return false end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 6))
redis.call('XTRIM', KEYS[2], 'MINID', '~', ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return id
"""


def valid_id(text: str) -> bool:
    """Whether ``text`` is an event id (a stream entry id, ``<ms>-<seq>``)."""
    return bool(_ID.fullmatch(text))


def id_key(event_id: str) -> tuple[int, int]:
    """An id as a pair that sorts like the stream does."""
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


@dataclass(frozen=True)
class Event:
    """One job event as read from a stream; encoded once, sent to every subscriber."""

    id: str
    type: str
    job: str
    batch: str | None
    at: float
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_entry(cls, entry_id: str, fields: dict[str, str]) -> Event:
        return cls(
            id=entry_id,
            type=fields.get("type", ""),
            job=fields.get("job", ""),
            batch=fields.get("batch") or None,
            at=float(fields.get("at") or 0),
            data=json.loads(fields.get("data") or "{}"),
        )

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "job": self.job,
            "batch": self.batch,
            "at": self.at,
            "data": self.data,
        }

    @cached_property
    def json(self) -> str:
        return json.dumps(self.document(), separators=(",", ":"))

    @cached_property
    def sse(self) -> bytes:
        """The event as one Server-Sent Events message (``id``, ``event``, ``data``)."""
        return f"id: {self.id}\nevent: {self.type}\ndata: {self.json}\n\n".encode()


def heartbeat() -> bytes:
    """An SSE comment: ignored by clients, keeps proxies from closing an idle stream."""
    return b": keep-alive\n\n"


@dataclass
class Selection:
    """Which of a tenant's events a subscriber wants: all, or those of some jobs and
    batches (a WebSocket subscribes and unsubscribes; an SSE stream is fixed)."""

    everything: bool = False
    jobs: set[str] = field(default_factory=set)
    batches: set[str] = field(default_factory=set)

    def matches(self, event: Event) -> bool:
        return (
            self.everything
            or event.job in self.jobs
            or (event.batch is not None and event.batch in self.batches)
        )

    def empty(self) -> bool:
        return not (self.everything or self.jobs or self.batches)


def select(events: Iterable[Event], selection: Selection) -> list[Event]:
    return [event for event in events if selection.matches(event)]


def entry(
    kind: str, job_id: str, batch_id: str | None, data: dict[str, Any], at: float | None = None
) -> dict[str, str]:
    """The fields of a stream entry."""
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown event type {kind!r}")
    return {
        "type": kind,
        "job": job_id,
        "batch": batch_id or "",
        "at": repr(time.time() if at is None else at),
        "data": json.dumps(data, separators=(",", ":")),
    }


def step_seconds(step: dict[str, Any]) -> float | None:
    """How long a step of a record's ``steps`` took, once it has both times."""
    if not (step.get("started_at") and step.get("finished_at")):
        return None
    started = datetime.fromisoformat(step["started_at"])
    return round((datetime.fromisoformat(step["finished_at"]) - started).total_seconds(), 4)


def video_progress(record: dict[str, Any], now: float) -> dict[str, Any] | None:
    """A video's progress from its raw record: frames done (out of postprocess) of the
    total, frames a second since its first step started, and the ETA at that rate."""
    total = int(record.get("frames_total") or 0)
    if total <= 0:
        return None
    done = min(int(record.get("frames_done:postprocess") or 0), total)
    steps = json.loads(record.get("steps") or "[]")
    started = steps[0].get("started_at") if steps else None
    rate = None
    if started and done:
        elapsed = max(now - datetime.fromisoformat(started).timestamp(), 1e-3)
        rate = done / elapsed
    return {
        "frames_done": done,
        "frames_total": total,
        "percent": round(100 * done / total, 1),
        "frames_per_second": round(rate, 2) if rate else None,
        "eta_seconds": round((total - done) / rate, 1) if rate else None,
    }


class EventLog:
    """Appends to the tenants' streams and reads them back (``JobStore.events``)."""

    def __init__(
        self, client: Any, keys: Any, retention_seconds: int = 3600, max_len: int = 10_000
    ) -> None:
        self.redis = client
        self.keys = keys
        self.retention_seconds = retention_seconds
        self.max_len = max_len
        self._batch_progress = client.register_script(_BATCH_PROGRESS)
        self._progress = client.register_script(_PROGRESS)

    def min_id(self, now: float | None = None) -> str:
        """The oldest id kept: ``retention_seconds`` ago."""
        now = time.time() if now is None else now
        return f"{max(int((now - self.retention_seconds) * 1000), 0)}-0"

    def add(self, pipe: Any, tenant: str, fields: dict[str, str]) -> None:
        """Queue an append on ``pipe`` (a transaction's, so it lands with the change)."""
        stream = self.keys.events(tenant)
        pipe.xadd(stream, fields, maxlen=self.max_len, approximate=True)
        pipe.xtrim(stream, minid=self.min_id(), approximate=True)
        pipe.expire(stream, self.retention_seconds)

    def append(self, tenant: str, fields: dict[str, str]) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            self.add(pipe, tenant, fields)
            pipe.execute()

    def batch_member_ended(
        self, tenant: str, batch_id: str, job_id: str, state: str, ttl: int
    ) -> str:
        keys = [self.keys.batch_counts(batch_id), self.keys.events(tenant)]
        args = [state, job_id, batch_id, repr(time.time()), ttl, self.max_len, self.min_id()]
        return str(self._batch_progress(keys=keys, args=args))

    def progress(self, record: dict[str, Any]) -> str | None:
        """A video's progress event, unless its job had one less than
        ``PROGRESS_EVERY_SECONDS`` ago (across every worker process)."""
        now = time.time()
        data = video_progress(record, now)
        if data is None:
            return None
        tenant = record.get("tenant") or "default"
        fields = entry("job.progress", record["id"], record.get("batch_id"), data, now)
        keys = [self.keys.progress_tick(record["id"]), self.keys.events(tenant)]
        head = [int(PROGRESS_EVERY_SECONDS * 1000), self.retention_seconds, self.max_len]
        args = [*head, self.min_id(now), "-", *(x for pair in fields.items() for x in pair)]
        added = self._progress(keys=keys, args=args)
        return str(added) if added else None

    def read(self, tenant: str, after: str = "0-0", count: int = 1000) -> list[Event]:
        """Events of ``tenant`` after the id ``after``, oldest first (at most ``count``)."""
        raw = self.redis.xrange(self.keys.events(tenant), f"({after}", "+", count=count)
        return [Event.from_entry(str(i), dict(f)) for i, f in raw]

    def last_id(self, tenant: str) -> str:
        raw = self.redis.xrevrange(self.keys.events(tenant), "+", "-", count=1)
        return str(raw[0][0]) if raw else "0-0"
