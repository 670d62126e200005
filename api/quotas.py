"""Per-tenant limits: jobs queued or running, submissions per minute, bytes stored.

Defaults come from the settings (``CV_QUOTA_*``), overrides from the tenant's record
(``PATCH /v1/tenants/{tenant}``); 0 means no limit. A submission is checked after it
is validated and before anything is stored: over a limit it gets a 429 with
``Retry-After`` and the limit it hit, and nothing is stored or queued.

- submissions per minute: a sliding window in Redis (the ``limits`` package), one hit
  per POST (a batch is one submission);
- jobs queued or running: counted from the tenant's own lists; the record is created
  by a script that refuses it when the tenant is at its limit, so two submissions
  never both take the last slot (``JobRecords.create``); a batch that would pass the
  limit is refused whole before any member is stored;
- bytes stored: what the tenant's uploads and artifacts hold, counted as jobs are
  recorded and succeed, released when they are deleted or expire.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from api.errors import TooManyRequests
from common.jobstore import JobStore
from common.settings import Settings

# Retry-After for limits that free up as jobs finish or are deleted, not on a clock.
RETRY_ACTIVE_SECONDS = 10
RETRY_BYTES_SECONDS = 300


@dataclass(frozen=True)
class Limits:
    active_jobs: int
    submissions_per_minute: int
    bytes: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Quotas:
    """The limits of each tenant and the checks a submission goes through."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        storage = RedisStorage(
            settings.redis_url,
            key_prefix=store.keys.rate_prefix(),
            socket_connect_timeout=2,
            socket_timeout=5,
        )
        self.limiter = SlidingWindowCounterRateLimiter(storage)

    def limits(self, tenant: str) -> Limits:
        """The tenant's limits: its overrides over the defaults."""
        found = self.store.tenants.get(tenant)
        overrides = found.limits if found is not None else {}
        defaults = Limits(
            active_jobs=self.settings.quota_active_jobs,
            submissions_per_minute=self.settings.quota_submissions_per_minute,
            bytes=self.settings.quota_bytes,
        )
        return Limits(**{**defaults.as_dict(), **overrides})

    def admit(self, tenant: str, jobs: int, upload_bytes: int) -> Limits:
        """Check a submission of ``jobs`` jobs holding ``upload_bytes``; 429 when over a limit.

        Returns the limits, so the caller can hand the active-jobs limit to the store.
        """
        limits = self.limits(tenant)
        if limits.bytes:
            stored = self.store.jobs.bytes_stored(tenant)
            if stored + upload_bytes > limits.bytes:
                raise TooManyRequests(
                    f"tenant {tenant!r} stores {stored} bytes; with this upload "
                    f"({upload_bytes} bytes) it would pass its limit of {limits.bytes}; "
                    "delete finished jobs to make room",
                    limit="bytes",
                    limit_value=limits.bytes,
                    usage=stored,
                    retry_after=RETRY_BYTES_SECONDS,
                )
        if limits.active_jobs:
            active = self.store.jobs.active(tenant)
            if active + jobs > limits.active_jobs:
                raise self.over_active(tenant, limits.active_jobs, active, jobs)
        if limits.submissions_per_minute:
            item = RateLimitItemPerMinute(limits.submissions_per_minute)
            if not self.limiter.hit(item, tenant):
                reset = self.limiter.get_window_stats(item, tenant).reset_time
                raise TooManyRequests(
                    f"tenant {tenant!r} may submit {limits.submissions_per_minute} times a minute",
                    limit="submissions_per_minute",
                    limit_value=limits.submissions_per_minute,
                    usage=limits.submissions_per_minute,
                    retry_after=max(1, math.ceil(reset - time.time())),
                )
        return limits

    def over_active(self, tenant: str, limit: int, active: int, jobs: int = 1) -> TooManyRequests:
        what = "this job" if jobs == 1 else f"these {jobs} jobs"
        return TooManyRequests(
            f"tenant {tenant!r} has {active} jobs queued or running; {what} would pass its "
            f"limit of {limit}",
            limit="active_jobs",
            limit_value=limit,
            usage=active,
            retry_after=RETRY_ACTIVE_SECONDS,
        )

    def usage(self, tenant: str) -> dict[str, Any]:
        """What ``GET /v1/usage`` shows: the limits and the tenant's use of each."""
        limits = self.limits(tenant)
        used = 0
        if limits.submissions_per_minute:
            item = RateLimitItemPerMinute(limits.submissions_per_minute)
            used = (
                limits.submissions_per_minute
                - self.limiter.get_window_stats(item, tenant).remaining
            )
        return {
            "tenant": tenant,
            "limits": limits.as_dict(),
            "usage": {
                "active_jobs": self.store.jobs.active(tenant),
                "submissions_per_minute": used,
                "bytes": self.store.jobs.bytes_stored(tenant),
            },
            "embedding_bytes": self.store.images.embedding_bytes(tenant),
        }
