"""Scheduled upkeep: what must happen even when no job moves.

Every ``CV_UPKEEP_SECONDS`` (60 s) one worker process, whichever claims the period
first in Redis (``JobStore.claim``), runs ``run_upkeep``:

- removes the files and list entries of jobs past their TTL (Redis expires the
  records by itself), upload directories whose submission never completed, and
  upload scratch files of API processes killed mid-request;
- fails jobs stuck past the step limit: a step whose worker was killed at the hard
  time limit or vanished without RabbitMQ redelivering (``fail_if_stuck``), and sends
  their callbacks;
- re-publishes jobs the API recorded but whose publish it never confirmed (it died
  in between), or fails them when their pipeline is gone;
- releases held members of batches whose window stalled (the process that should
  have released the next member died, or the broker was down);
- drops the model reports of inference workers that stopped reporting.

Reads (the API's GETs) never write; everything that tidies up is here.

Why a timer in the workers rather than Celery beat: beat is one more process that
every deployment must run exactly once (a second one doubles the work, none stops
upkeep unnoticed), while every deployment already runs workers; the Redis claim
makes any number of them, on any number of hosts, run upkeep once per period, and
upkeep goes on as long as one worker of any queue lives. It runs in each worker's
main process (``celery_worker.worker``), beside the pool, so no task waits for it
and no task's queue delays it. A pass holds a lock while it runs, so a slow pass is
never overlapped by the next period's. ``python -m celery_worker.upkeep`` runs one
pass now (under the same lock).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kombu.exceptions import OperationalError
from redis.exceptions import LockError

from celery_worker.context import WorkerContext
from celery_worker.task import forget
from celery_worker.video.chunks import FINISH_SECONDS_PER_FRAME
from common.batching import fill
from common.catalogue import load_catalogue
from common.celery_app import HARD_LIMIT_GRACE_SECONDS
from common.chains import build_prompt, build_start
from common.clock import seconds_since
from common.contract import ACTIVE_STATES, DEFAULT_TENANT, PROMPT_PIPELINE
from common.jobstore import JobStore
from common.jobstore.records import JobRecords
from common.settings import Settings
from common.storage import Storage

log = logging.getLogger(__name__)

# A job directory without any record is an upload whose submission failed half way
# (e.g. the API process died); it is removed once it is this old.
ORPHAN_AGE_SECONDS = 3600
# Upload scratch files (storage tmp/) of an API process killed mid-request.
SCRATCH_AGE_SECONDS = 86400
# A job recorded this long ago whose publish the API never confirmed was never
# published: the API publishes within CV_PUBLISH_TIMEOUT_SECONDS (2 s) or answers 503.
# The margin covers clocks of the API and worker hosts a little apart, and a publish held
# up by a RabbitMQ resource alarm; one that is held longer ends up published twice, which
# costs work, not correctness (a job's steps refuse to run once it has finished).
UNPUBLISHED_AFTER_SECONDS = 120
# Longest an upkeep pass may hold its lock (a pass that dies keeps it no longer).
PASS_LOCK_SECONDS = 600


@dataclass(frozen=True)
class UpkeepReport:
    expired: int  # jobs past their TTL removed
    stuck: int  # jobs failed as stuck
    republished: int  # jobs published again
    abandoned: int  # unpublished jobs failed (pipeline gone)
    released: int = 0  # held batch members released for stalled windows


def run_upkeep(ctx: WorkerContext, now: float | None = None) -> UpkeepReport | None:
    """One upkeep pass (see the module docstring); None when another pass is running."""
    lock = ctx.store.redis.lock(ctx.store.keys.lock("upkeep-pass"), timeout=PASS_LOCK_SECONDS)
    if not lock.acquire(blocking=False):
        return None
    try:
        now = time.time() if now is None else now
        expired = purge_expired(ctx.store, ctx.storage, now)
        purge_images(ctx.store, ctx.storage, ctx.settings, now)

        def failed(job_id: str) -> None:
            ctx.ended(job_id)
            tenant = ctx.store.jobs.tenant_of(job_id) or DEFAULT_TENANT
            forget(ctx, tenant, job_id)  # its working files (a video's frames and segments)

        stuck = fail_stuck_jobs(ctx.store.jobs, stuck_after(ctx.settings), now, failed)
        republished, abandoned = republish_unpublished(ctx, now)
        released = release_stalled_batches(ctx, now)
        ctx.store.workers.prune()
    finally:
        try:
            lock.release()
        except LockError:  # the pass outlived its lock; the next one runs on its own
            log.warning("upkeep: a pass took longer than %s s", PASS_LOCK_SECONDS)
    report = UpkeepReport(expired, stuck, republished, abandoned, released)
    if expired or stuck or republished or abandoned or released:
        log.info("upkeep: %s", report)
    return report


def purge_expired(store: JobStore, storage: Storage, now: float | None = None) -> int:
    """Delete jobs submitted more than the TTL ago, tenant by tenant; returns how many went."""
    now = time.time() if now is None else now
    count = 0
    for tenant in sorted({DEFAULT_TENANT, *store.tenants.names(), *storage.tenants()}):
        for job_id in store.jobs.expired_ids(now, tenant=tenant):
            storage.remove_job(tenant, job_id)
            store.jobs.delete(job_id, tenant)
            count += 1
        for job_id in storage.job_ids(tenant):
            try:
                age = now - storage.job_dir(tenant, job_id).stat().st_mtime
            except FileNotFoundError:  # deleted meanwhile (API DELETE, a cancelled step)
                continue
            if age > ORPHAN_AGE_SECONDS and store.jobs.state(job_id) is None:
                storage.remove_job(tenant, job_id)
    # Left in the list of every job only (made before tenants existed and not migrated,
    # common/migrate.py): its tenant is the record's, while it lasts.
    for job_id in store.jobs.expired_ids(now):
        tenant = store.jobs.tenant_of(job_id) or DEFAULT_TENANT
        storage.remove_job(tenant, job_id)
        store.jobs.delete(job_id, tenant)
        count += 1
    _purge_scratch(storage, now)
    return count


def purge_images(store: JobStore, storage: Storage, settings: Settings, now: float) -> int:
    """Remove images unused for ``CV_IMAGE_TTL_SECONDS`` and embeddings unused for
    ``CV_EMBEDDING_TTL_SECONDS`` (their records expired in Redis: their files and list
    entries go here), and files no record names; returns how many images went."""
    images = store.images
    count = 0
    for tenant in sorted({*store.tenants.names(), *storage.tenants()}):
        before = now - settings.image_ttl_seconds
        for image_id in images.expired(tenant, before):
            gone = images.delete(tenant, image_id, unused_since=before)
            if gone is None and images.get(tenant, image_id) is not None:
                continue  # uploaded again meanwhile: it stays, with its files
            storage.remove_image(tenant, image_id)
            count += 1
        for name in images.stale_embeddings(tenant, now - settings.embedding_ttl_seconds):
            key = images.drop_embedding(tenant, name)
            if key:
                storage.path(key).unlink(missing_ok=True)
        for image_id in storage.image_ids(tenant):
            if _old(storage.image_dir(tenant, image_id), now) and not images.get(tenant, image_id):
                storage.remove_image(tenant, image_id)
        for key in storage.embedding_keys(tenant):
            name = key.rsplit("/", 1)[-1].removesuffix(".npz")
            if _old(storage.path(key), now) and not images.has_embedding(tenant, name):
                storage.path(key).unlink(missing_ok=True)
    return count


def _old(path: Path, now: float) -> bool:
    """Older than a file being written (a worker writes its file before its record)."""
    try:
        return now - path.stat().st_mtime > ORPHAN_AGE_SECONDS
    except FileNotFoundError:  # deleted meanwhile
        return False


def _purge_scratch(storage: Storage, now: float) -> None:
    if not storage.tmp_dir.is_dir():
        return
    for path in storage.tmp_dir.iterdir():
        try:
            if path.is_file() and now - path.stat().st_mtime > SCRATCH_AGE_SECONDS:
                path.unlink()
        except FileNotFoundError:  # finished meanwhile
            continue


def stuck_after(settings: Settings) -> float:
    """Seconds after which a running step is surely dead: past Celery's hard limit."""
    return settings.step_time_limit_seconds + HARD_LIMIT_GRACE_SECONDS + 30


def fail_stuck_jobs(
    jobs: JobRecords,
    limit_seconds: float,
    now: float | None = None,
    on_failed: Callable[[str], None] | None = None,
) -> int:
    """Fail every running job stuck for more than ``limit_seconds``; returns how many.

    ``on_failed(job_id)`` runs for each (its callback, its working files).
    """
    failed = 0
    for job_id in jobs.ids_in("running"):
        record = jobs.get(job_id)
        if record is None:
            continue
        if fail_if_stuck(jobs, record, limit_seconds, now)["state"] == "failed":
            failed += 1
            if on_failed is not None:
                on_failed(job_id)
    return failed


def fail_if_stuck(
    jobs: JobRecords, record: dict[str, Any], limit_seconds: float, now: float | None = None
) -> dict[str, Any]:
    """Fail a job whose current step started more than ``limit_seconds`` ago.

    A step past its hard time limit, or whose worker vanished without RabbitMQ
    redelivering, would otherwise stay ``running`` until the record expires.
    Returns the record as it is now.
    """
    now = time.time() if now is None else now
    if record["state"] != "running" or not record.get("step"):
        return record
    if record.get("frames_total"):
        return _fail_video_if_stuck(jobs, record, limit_seconds, now)
    step = next((s for s in record["steps"] if s["name"] == record["step"]), None)
    if step is None or not step.get("started_at") or step.get("finished_at"):
        return record
    if seconds_since(step["started_at"], now) <= limit_seconds:
        return record
    what = f"the {step['name']} step did not finish within {limit_seconds:.0f} s"
    return _fail_stuck(jobs, record, step["name"], what)


def _fail_video_if_stuck(
    jobs: JobRecords, record: dict[str, Any], limit_seconds: float, now: float
) -> dict[str, Any]:
    """A video is stuck when a chunk (or the finishing step) started and nothing finished
    for ``limit_seconds``. Chunks waiting in a queue behind other work are not stuck,
    as a queued image is not.
    """
    active, done = record.get("active_at"), record.get("progress_at")
    if not active or (done and datetime.fromisoformat(done) >= datetime.fromisoformat(active)):
        return record
    frames = int(record.get("frames_total") or 0)
    if int(record.get("frames_done:postprocess") or 0) >= frames:
        # Every chunk is done: the finishing step runs, with a limit that grows with the
        # video (video.chunks.publish_finish).
        limit_seconds += FINISH_SECONDS_PER_FRAME * frames
    if seconds_since(active, now) <= limit_seconds:
        return record
    what = f"no chunk of the video finished within {limit_seconds:.0f} s of the last one starting"
    return _fail_stuck(jobs, record, record["step"], what)


def _fail_stuck(jobs: JobRecords, record: dict[str, Any], step: str, what: str) -> dict[str, Any]:
    """Fail a job as timed out; returns the record as it is now."""
    jobs.fail(record["id"], step, "timeout", f"{what} (its worker was stopped, killed or lost)")
    return jobs.get(record["id"]) or record


def republish_unpublished(ctx: WorkerContext, now: float) -> tuple[int, int]:
    """Publish again the jobs whose publish the API never confirmed; (published, failed).

    The pipelines are read afresh from the files, as the API read them: a pipeline added
    by editing the file and restarting only the API is known here too.
    """
    jobs = ctx.store.jobs
    candidates = jobs.unpublished(before=now - UNPUBLISHED_AFTER_SECONDS)
    if not candidates:
        return 0, 0
    pipelines = load_catalogue(ctx.settings).pipelines
    published = failed = 0
    for job_id in candidates:
        record = jobs.get(job_id)
        if record is None or record["state"] != "queued":
            jobs.published(job_id)  # gone, or its first step ran: it was published after all
            continue
        pipeline = pipelines.get(record["pipeline"])
        reason = None
        if record["pipeline"] == PROMPT_PIPELINE:
            start = build_prompt(ctx.celery, record, ctx.settings.sam_decoder_queue, True)
        elif pipeline is None:
            reason = f"its pipeline {record['pipeline']!r} is no longer configured"
        else:
            try:
                start = build_start(ctx.celery, pipeline, record)
            except (KeyError, TypeError) as exc:  # a record this version cannot read
                reason = f"its record cannot be read ({type(exc).__name__}: {exc})"
        if reason is not None:
            detail = f"the API stopped before queueing the job, and {reason}; submit it again"
            if jobs.fail(job_id, None, "internal", detail):
                ctx.ended(job_id)
            jobs.published(job_id)
            failed += 1
            continue
        try:
            start.apply_async()
        except OperationalError:
            log.warning("upkeep: the broker does not answer; job %s is published later", job_id)
            break
        jobs.published(job_id)
        log.warning("upkeep: job %s was recorded but never published; published it now", job_id)
        published += 1
    return published, failed


def release_stalled_batches(ctx: WorkerContext, now: float) -> int:
    """Fill the window of each batch with held members: after dropping from its members in
    flight those that ended without saying so (their process died), as a worker would."""
    released = 0
    pipelines = None
    for batch_id in ctx.store.batches.with_held():
        for job_id in ctx.store.batches.in_flight(batch_id):
            if ctx.store.jobs.state(job_id) not in ACTIVE_STATES:
                ctx.store.batches.landed(batch_id, job_id)
        pipelines = pipelines or load_catalogue(ctx.settings).pipelines
        released += fill(ctx.store, ctx.celery, pipelines, batch_id)
    return released


class UpkeepTimer(threading.Thread):
    """Every ``settings.upkeep_seconds``: run upkeep if this process claims the period."""

    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(name="upkeep", daemon=True)
        self.ctx = ctx
        self.stopped = threading.Event()

    def run(self) -> None:
        period = self.ctx.settings.upkeep_seconds
        while not self.stopped.wait(period):
            try:
                if self.ctx.store.claim("upkeep", period):
                    run_upkeep(self.ctx)
            except Exception:  # upkeep must never stop the worker; the next period retries
                log.exception("upkeep failed")

    def stop(self) -> None:
        self.stopped.set()


if __name__ == "__main__":
    from celery_worker.worker import create_worker_app

    print(run_upkeep(create_worker_app().context))
