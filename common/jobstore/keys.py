"""The key scheme of the job store: every Redis key the service writes, in one place.

Prefix ``cv`` by default (``CV_REDIS_PREFIX``); values are human-readable (hashes
and JSON strings), so they browse well in RedisInsight.

=================================  ======  =================================================
key                                type    what
=================================  ======  =================================================
``cv:job:<id>``                    hash    a job's record: one field per attribute, nested
                                           values as JSON strings (``records``)
``cv:result:<id>``                 string  its result document, JSON (``records``)
``cv:jobs``                        zset    every job id, scored by submission time
``cv:jobs:<state>``                zset    the same, one set per state (filtered lists)
``cv:unpublished``                 zset    jobs recorded whose first step the API has not
                                           yet seen published; upkeep re-publishes the old
                                           ones (the API died in between)
``cv:job:<id>:chunks:<stage>``     set     video chunks a stage has finished, counted once
                                           per index however often they ran (``chunks``)
``cv:job:<id>:dispatched``         set     video chunks published (-1: the finishing step)
``cv:batch:<id>``                  string  a batch: its members and their job ids, JSON
                                           (``batches``)
``cv:workers``                     hash    one JSON report per inference worker process:
                                           its models, and when the report goes stale
                                           (``workers``); read on every submission
``cv:lock:<name>``                 string  held by one process per period (``upkeep``)
=================================  ======  =================================================

A video's record also holds ``frames_total``, ``chunks_total``, per stage
``frames_done:<stage>`` and ``busy:<stage>`` (worker seconds), ``active_at`` (a chunk
last started) and ``progress_at`` (a chunk last finished).

Records, results, chunk sets and batches expire after the job TTL
(``CV_JOB_TTL_SECONDS``); the sorted sets are trimmed by upkeep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.contract import JOB_STATES, STAGES


@dataclass(frozen=True)
class Keys:
    prefix: str = "cv"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def result(self, job_id: str) -> str:
        return f"{self.prefix}:result:{job_id}"

    def index(self, state: str | None = None) -> str:
        return f"{self.prefix}:jobs" if state is None else f"{self.prefix}:jobs:{state}"

    def indexes(self) -> list[str]:
        """The list of every job and the list of each state."""
        return [self.index()] + [self.index(state) for state in JOB_STATES]

    def unpublished(self) -> str:
        return f"{self.prefix}:unpublished"

    def chunks(self, job_id: str, stage: str) -> str:
        return f"{self.job(job_id)}:chunks:{stage}"

    def dispatched(self, job_id: str) -> str:
        return f"{self.job(job_id)}:dispatched"

    def of_job(self, job_id: str) -> list[str]:
        """Every key that belongs to one job (the sorted sets aside)."""
        return [
            self.job(job_id),
            self.result(job_id),
            self.dispatched(job_id),
            *(self.chunks(job_id, stage) for stage in STAGES),
        ]

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def lock(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"


@dataclass
class StorePart:
    """One concept of the store: a Redis client (``decode_responses``), the keys, the job TTL."""

    redis: Any
    keys: Keys
    ttl: int

    def __post_init__(self) -> None:
        """Where a part registers its Lua scripts (once: each call is then an EVALSHA)."""
