"""Job records made directly in the store, for tests of the store and of upkeep."""

from __future__ import annotations

import uuid
from typing import Any

from common.jobstore import JobStore
from tests.support.catalogue import PIPELINES


def new_job(
    store: JobStore,
    pipeline: str = "detect",
    options: dict[str, Any] | None = None,
    input_info: dict[str, Any] | None = None,
    job_id: str | None = None,
) -> str:
    """A queued job's record (nothing published, no file stored unless the caller does)."""
    job_id = job_id or uuid.uuid4().hex
    stages = [(s.stage, s.queue) for s in PIPELINES[pipeline].steps]
    store.jobs.create(
        job_id,
        pipeline,
        stages,
        options if options is not None else {"a": 1},
        input_info if input_info is not None else {"key": "k", "bytes": 3},
        ["t1", "t2", "t3"],
    )
    return job_id
