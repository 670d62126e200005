"""Releasing a batch's held members: at most ``CV_BATCH_WINDOW`` members of a batch in flight.

A batch's members are recorded as they arrive; a member is held when the batch has a
window's worth in flight already (``common.jobstore.batches``). Whenever a member
ends (succeeded, failed, cancelled), whoever ended it lets it land and fills the
window: the workers after a step ends a job, the API after a cancel, upkeep for
batches that stalled (a process died before it filled the window).
Used by both sides, so stdlib and Celery only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError

from common.catalogue import PipelineConfig
from common.chains import build_start
from common.jobstore import JobStore

log = logging.getLogger(__name__)


def fill(
    store: JobStore, celery: Celery, pipelines: Mapping[str, PipelineConfig], batch_id: str
) -> int:
    """Publish the batch's held members that fit its window now, in order; returns how many.

    Members cancelled or gone while held land at once (and make room for the next).
    Each released member is noted unpublished until its publish is confirmed, so if the
    broker fails now, upkeep publishes it later.
    """
    published = 0
    while released := store.batches.fill(batch_id):
        for job_id in released:
            record = store.jobs.get(job_id)
            pipeline = pipelines.get(record["pipeline"]) if record else None
            if record is None or record["state"] != "queued":
                store.batches.landed(batch_id, job_id)  # cancelled or gone while it waited
                store.jobs.published(job_id)
                continue
            if pipeline is None:
                continue  # upkeep fails it (the pipeline is no longer configured)
            try:
                build_start(celery, pipeline, record).apply_async()
            except OperationalError as exc:
                log.warning(
                    "batch %s: member %s not published (%s); upkeep will", batch_id, job_id, exc
                )
                return published
            store.jobs.published(job_id)
            published += 1
    return published


def after_end(
    store: JobStore, celery: Celery, pipelines: Mapping[str, PipelineConfig], record: Any
) -> int:
    """A job ended: if it was a batch member, it leaves the batch's window for the next."""
    if not record or not record.get("batch_id"):
        return 0
    store.batches.landed(record["batch_id"], record["id"])
    return fill(store, celery, pipelines, record["batch_id"])
