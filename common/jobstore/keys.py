"""The key scheme of the job store: every Redis key the service writes, in one place.

Prefix ``cv`` by default (``CV_REDIS_PREFIX``); values are human-readable (hashes
and JSON strings), so they browse well in RedisInsight.

=================================  ======  =================================================
key                                type    what
=================================  ======  =================================================
``cv:job:<id>``                    hash    a job's record: one field per attribute, nested
                                           values as JSON strings (``records``)
``cv:result:<id>``                 string  its result document, JSON (``records``)
``cv:jobs``                        zset    every job id, scored by submission time (admin
                                           lists, upkeep)
``cv:jobs:<state>``                zset    the same, one set per state (filtered lists)
``cv:t:<tenant>:jobs``             zset    a tenant's job ids, scored by submission time;
                                           lists and counts never read other tenants'
``cv:t:<tenant>:jobs:<state>``     zset    the same, one set per state (active-jobs quota:
                                           the sizes of ``queued`` and ``running``)
``cv:t:<tenant>:usage``            hash    ``bytes``: what the tenant's jobs hold in storage
``cv:t:<tenant>:job-bytes``        hash    job id -> bytes it holds (released on delete)
``cv:t:<tenant>:events``           stream  the tenant's job events, capped by age and
                                           length (``common.events``)
``cv:rate:...``                    string  the submissions-per-minute windows (``limits``)
``cv:unpublished``                 zset    jobs recorded whose first step the API has not
                                           yet seen published; upkeep re-publishes the old
                                           ones (the API died in between)
``cv:job:<id>:chunks:<stage>``     set     video chunks a stage has finished, counted once
                                           per index however often they ran (``chunks``)
``cv:job:<id>:dispatched``         set     video chunks published (-1: the finishing step)
``cv:batch:<id>``                  string  a batch: its members and their job ids, JSON
                                           (``batches``)
``cv:batch:<id>:held``             list    members recorded but held back, in order
``cv:batch:<id>:flight``           set     members in flight (at most the window)
``cv:batch:<id>:window``           string  how many may be in flight (``CV_BATCH_WINDOW``)
``cv:batches:held``                set     batches with held members (upkeep's to watch)
``cv:batch:<id>:counts``           hash    its members ended, by state, and ``total``
                                           (the ``batch.progress`` events)
``cv:job:<id>:progress-tick``      string  held for 0.5 s after a progress event
``cv:workers``                     hash    one JSON report per inference worker process:
                                           its models, and when the report goes stale
                                           (``workers``); read on every submission
``cv:tenants``                     set     every tenant name (``tenants``)
``cv:tenant:<name>``               hash    a tenant: created_at, limits (JSON overrides of
                                           the defaults), signing secrets (JSON)
``cv:apikeys``                     set     every API key id (``apikeys``)
``cv:apikey:<id>``                 hash    a key: prefix, sha256, tenant, name, role,
                                           created_at, last_used_at, revoked_at; never the key
``cv:apikey-hash:<sha256>``        string  the id of the key with this hash
``cv:lock:<name>``                 string  held by one process per period (``upkeep``)
``cv:t:<tenant>:image:<id>``       hash    an image of ``POST /v1/images``: sha256, storage
                                           key, size, and per SAM model its embedding's
                                           state (``embedding:<model>``, JSON) and worker
                                           deaths (``deliveries:<model>``); expires after
                                           ``CV_IMAGE_TTL_SECONDS`` unused (``images``)
``cv:t:<tenant>:images``           zset    the tenant's image ids, scored by last use
                                           (upkeep removes the files of expired ones)
``cv:t:<tenant>:embedding:<name>`` hash    one cached embedding, ``<name>`` = content
                                           sha256 + ``-`` + weights sha256[:16]: storage
                                           key, bytes, model; upkeep removes it (and its
                                           file) unused for ``CV_EMBEDDING_TTL_SECONDS``
``cv:t:<tenant>:embeddings``       zset    the tenant's embedding names by last use: the
                                           least recently used go past
                                           ``CV_EMBEDDING_CACHE_BYTES`` (``usage`` field
                                           ``embedding_bytes`` counts them)
``cv:job:<id>:answered``           list    a prompt job's worker pushes here when it ends;
                                           the API request waiting for it pops
=================================  ======  =================================================

A video's record also holds ``frames_total``, ``chunks_total``, per stage
``frames_done:<stage>`` and ``busy:<stage>`` (worker seconds), ``active_at`` (a chunk
last started) and ``progress_at`` (a chunk last finished).

Records, results, chunk sets and batches expire after the job TTL
(``CV_JOB_TTL_SECONDS``); the sorted sets and byte counts are trimmed by upkeep.
Tenants and keys do not expire (a revoked key's record stays, marked revoked).
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

    def tenant_index(self, tenant: str, state: str | None = None) -> str:
        base = f"{self.prefix}:t:{tenant}:jobs"
        return base if state is None else f"{base}:{state}"

    def tenant_indexes(self, tenant: str) -> list[str]:
        return [self.tenant_index(tenant)] + [self.tenant_index(tenant, s) for s in JOB_STATES]

    def usage(self, tenant: str) -> str:
        return f"{self.prefix}:t:{tenant}:usage"

    def job_bytes(self, tenant: str) -> str:
        return f"{self.prefix}:t:{tenant}:job-bytes"

    def events(self, tenant: str) -> str:
        return f"{self.prefix}:t:{tenant}:events"

    def batch_counts(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:counts"

    def progress_tick(self, job_id: str) -> str:
        return f"{self.job(job_id)}:progress-tick"

    def rate_prefix(self) -> str:
        return f"{self.prefix}:rate"

    def tenants(self) -> str:
        return f"{self.prefix}:tenants"

    def tenant(self, name: str) -> str:
        return f"{self.prefix}:tenant:{name}"

    def apikeys(self) -> str:
        return f"{self.prefix}:apikeys"

    def apikey(self, key_id: str) -> str:
        return f"{self.prefix}:apikey:{key_id}"

    def apikey_hash(self, digest: str) -> str:
        return f"{self.prefix}:apikey-hash:{digest}"

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
            self.answered(job_id),
            *(self.chunks(job_id, stage) for stage in STAGES),
        ]

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def held(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:held"

    def in_flight(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:flight"

    def window(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:window"

    def held_batches(self) -> str:
        return f"{self.prefix}:batches:held"

    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def lock(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"

    def image(self, tenant: str, image_id: str) -> str:
        return f"{self.prefix}:t:{tenant}:image:{image_id}"

    def images(self, tenant: str) -> str:
        return f"{self.prefix}:t:{tenant}:images"

    def embedding(self, tenant: str, name: str) -> str:
        return f"{self.prefix}:t:{tenant}:embedding:{name}"

    def embeddings(self, tenant: str) -> str:
        return f"{self.prefix}:t:{tenant}:embeddings"

    def answered(self, job_id: str) -> str:
        return f"{self.job(job_id)}:answered"


@dataclass
class StorePart:
    """One concept of the store: a Redis client (``decode_responses``), the keys, the job TTL."""

    redis: Any
    keys: Keys
    ttl: int

    def __post_init__(self) -> None:
        """Where a part registers its Lua scripts (once: each call is then an EVALSHA)."""
