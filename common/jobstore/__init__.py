"""The job store in Redis, shared by the API and the workers: one concept per module.

- ``keys``: the key scheme (every key the service writes, documented there);
- ``records``: job records, results, the lists; ``transitions``: their state machine;
- ``chunks``: the chunk ledger of video jobs;
- ``batches``: batch documents;
- ``workers``: the registry of inference workers and their models;
- ``tenants``: tenants, their limits and signing secrets; ``apikeys``: API keys;
- ``images``: images for interactive segmentation, and the embedding cache's index;
- ``events`` (``common.events``): the tenants' streams of job events.

``JobStore`` holds one of each over one Redis client and prefix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis

from common.clock import now_iso
from common.events import EventLog
from common.jobstore.apikeys import ApiKeys
from common.jobstore.batches import Batches
from common.jobstore.chunks import ChunkLedger
from common.jobstore.images import Images
from common.jobstore.keys import Keys
from common.jobstore.records import JobRecords
from common.jobstore.tenants import Tenants
from common.jobstore.workers import WorkerRegistry

if TYPE_CHECKING:
    from common.settings import Settings


class JobStore:
    """Everything the service keeps in Redis, by concept: ``jobs``, ``chunks``,
    ``batches``, ``workers``, ``tenants``, ``apikeys``, ``images``."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "cv",
        ttl_seconds: int = 7 * 86400,
        events_retention_seconds: int = 3600,
        events_max_per_tenant: int = 10_000,
    ):
        # Any: redis-py's types cannot express decode_responses=True (str, not bytes).
        self.redis: Any = client
        self.keys = Keys(prefix)
        self.ttl = ttl_seconds
        self.jobs = JobRecords(self.redis, self.keys, ttl_seconds)
        self.chunks = ChunkLedger(self.redis, self.keys, ttl_seconds)
        self.batches = Batches(self.redis, self.keys, ttl_seconds)
        self.workers = WorkerRegistry(self.redis, self.keys, ttl_seconds)
        self.tenants = Tenants(self.redis, self.keys, ttl_seconds)
        self.apikeys = ApiKeys(self.redis, self.keys, ttl_seconds)
        self.images = Images(self.redis, self.keys, ttl_seconds)
        self.events = EventLog(
            self.redis, self.keys, events_retention_seconds, events_max_per_tenant
        )
        self.jobs.events = self.events
        self.chunks.events = self.events

    @classmethod
    def from_url(cls, url: str, prefix: str, ttl_seconds: int, **events: int) -> JobStore:
        """No connection is opened here: Redis connects on first use (after a fork).
        ``events``: ``events_retention_seconds``, ``events_max_per_tenant``."""
        client = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5
        )
        return cls(client, prefix, ttl_seconds, **events)

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        """The store a process of the service uses (URL, prefix, TTL, event retention)."""
        return cls.from_url(
            settings.redis_url,
            settings.redis_prefix,
            settings.job_ttl_seconds,
            events_retention_seconds=settings.events_retention_seconds,
            events_max_per_tenant=settings.events_max_per_tenant,
        )

    def claim(self, name: str, seconds: float) -> bool:
        """True for at most one caller per ``seconds``, across all processes and hosts."""
        return bool(
            self.redis.set(self.keys.lock(name), now_iso(), nx=True, px=int(seconds * 1000))
        )

    def ping(self) -> bool:
        return bool(self.redis.ping())


__all__ = ["JobStore", "Keys"]
