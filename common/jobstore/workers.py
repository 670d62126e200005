"""The worker registry: what each inference worker process has loaded, while it lives.

Each inference process reports its models every ``CV_WORKER_HEARTBEAT_SECONDS``
into one hash (``cv:workers``), each report valid for three periods; the API reads
it on every submission (one key, never a SCAN) to refuse jobs whose model no
online worker holds. Reports of workers that died without saying so are dropped by upkeep.
"""

from __future__ import annotations

import json
import time
from typing import Any

from common.jobstore.keys import StorePart


class WorkerRegistry(StorePart):
    def report(self, name: str, info: dict[str, Any], ttl_seconds: int) -> None:
        """Record a worker's report, valid for ``ttl_seconds`` unless renewed."""
        entry = {**info, "expires": time.time() + ttl_seconds}
        self.redis.hset(self.keys.workers(), name, json.dumps(entry))

    def forget(self, name: str) -> None:
        self.redis.hdel(self.keys.workers(), name)

    def alive(self) -> list[dict[str, Any]]:
        """Reports of the workers alive now (stale ones are skipped; upkeep drops them)."""
        now = time.time()
        reports = sorted(self.redis.hgetall(self.keys.workers()).items())
        entries = [json.loads(value) for _, value in reports]
        return [entry for entry in entries if entry.get("expires", 0) > now]

    def prune(self) -> int:
        """Drop the reports of workers that stopped reporting; returns how many."""
        now = time.time()
        stale = [
            name
            for name, value in self.redis.hgetall(self.keys.workers()).items()
            if json.loads(value).get("expires", 0) <= now
        ]
        if stale:
            self.redis.hdel(self.keys.workers(), *stale)
        return len(stale)
