"""Batches: one JSON document per batch (its members and their job ids), expiring with the jobs.

A batch's progress is read from its jobs' own records (``JobRecords.states``), so
nothing here changes after the batch is created.
"""

from __future__ import annotations

import json
from typing import Any

from common.jobstore.keys import StorePart


class Batches(StorePart):
    def create(self, batch: dict[str, Any]) -> None:
        self.redis.set(self.keys.batch(batch["id"]), json.dumps(batch), ex=self.ttl)

    def get(self, batch_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(self.keys.batch(batch_id))
        return json.loads(str(raw)) if raw is not None else None
