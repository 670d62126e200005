"""Releasing a batch's held members: at most ``CV_BATCH_WINDOW`` members of a batch in flight.

A batch's first members are published with it; the rest are recorded but held
(``common.jobstore.batches``). Whenever a member that was in flight ends (succeeded,
failed, cancelled), whoever ended it releases the next one: the workers after a step
ends a job, the API after a cancel, upkeep for batches that stalled (a releaser died).
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


def release(
    store: JobStore,
    celery: Celery,
    pipelines: Mapping[str, PipelineConfig],
    batch_id: str,
    count: int,
) -> int:
    """Publish up to ``count`` held members of the batch, in order; returns how many.

    Members cancelled or gone while held are passed over. Each released member is noted
    unpublished until its publish is confirmed, so if the broker fails now, upkeep
    publishes it later.
    """
    published = 0
    while published < count:
        released = store.batches.release(batch_id, count - published)
        if not released:
            break
        for job_id in released:
            record = store.jobs.get(job_id)
            pipeline = pipelines.get(record["pipeline"]) if record else None
            if record is None or record["state"] != "queued":
                store.jobs.published(job_id)  # cancelled or gone while it waited
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
    """A job ended: if it was a batch member in flight, release the batch's next member."""
    if not record or not record.get("batch_id") or record.get("held"):
        return 0
    return release(store, celery, pipelines, record["batch_id"], 1)
