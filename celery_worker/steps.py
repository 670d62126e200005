"""``job_step``: the bookkeeping every step shares.

Before the work: refuse to run for a job that is no longer active (cancelled,
deleted, expired) and mark the step started. After: record its time and mark it
finished. On failure: mark the job failed with a reason (see ``errors``). A
step runs again from scratch when its worker dies (acks_late), so steps only
write whole files under fixed names: running twice gives the same result.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable
from typing import Any

import redis
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from celery_worker.app import app, context
from celery_worker.context import WorkerContext
from celery_worker.errors import ChunkAlreadyDone, JobGone, StepFailed
from common.contract import QUEUE_NOTIFY, TASK_NOTIFY, Payload
from common.jobstore import JobStore

StepFunction = Callable[[WorkerContext, Payload], Payload]

# A step whose worker died this many times is not tried again: the input probably
# kills the worker (out of memory, a crash in native code), and retrying forever
# would block the queue.
MAX_REDELIVERIES = 2


def job_step(
    task_name: str,
    step: str,
    final: bool = False,
    finishes_step: bool = True,
    continues_stage: bool = False,
) -> Callable[[StepFunction], Any]:
    """Register ``fn(ctx, payload) -> payload`` as the Celery task ``task_name``.

    A ``final`` step ends the job itself (``store.succeed``) and raises ``JobGone``
    when that finds the job cancelled. A step that only starts work others finish
    (a video's planning step) passes ``finishes_step=False``; one that ends a stage
    chunks began (a video's finishing step) passes ``continues_stage=True``, so the
    stage keeps its start time.
    """

    def decorate(fn: StepFunction) -> Any:
        @_task(task_name)
        @functools.wraps(fn)
        def run(self: Any, payload: Payload) -> Payload:
            job_id = payload["job_id"]
            store = context.store
            begin = store.stage_started if continues_stage else store.step_started
            out = _guarded(self, fn, payload, step, step, begin)
            if final:
                notify(job_id)
            elif finishes_step and not context.store.step_finished(job_id, step):
                _forget(job_id)
                raise Ignore()
            return out

        return run

    return decorate


def chunk_step(task_name: str, stage: str) -> Callable[[StepFunction], Any]:
    """Register a step that works on one chunk of a video (``payload["chunk"]``).

    Many run at once for one job: the stage is marked started by the first, and
    finished by whoever completes its last chunk (``chunks.chunk_finished``). Deaths
    are counted per chunk, so one chunk that kills its worker fails the job, while
    a worker lost once on each of many chunks does not.
    """

    def decorate(fn: StepFunction) -> Any:
        @_task(task_name)
        @functools.wraps(fn)
        def run(self: Any, payload: Payload) -> Payload:
            key = f"{stage}:chunk-{payload['chunk']['index']}"
            return _guarded(self, fn, payload, stage, key, context.store.stage_started)

        return run

    return decorate


def _task(task_name: str) -> Callable[[Any], Any]:
    return app.task(  # type: ignore[no-any-return]
        name=task_name,
        bind=True,
        autoretry_for=(redis.ConnectionError, redis.TimeoutError),
        retry_backoff=True,
        retry_backoff_max=30,
        max_retries=8,
    )


def _guarded(
    task: Any,
    fn: StepFunction,
    payload: Payload,
    step: str,
    redelivery_key: str,
    begin: Callable[[str, str], bool],
) -> Payload:
    """Run ``fn`` for an active job; turn its failures into the job's failure.

    Raises ``Ignore`` (the chain stops quietly) when the job is no longer active or
    failed here; re-raises Redis errors (retried) and bugs (after failing the job).
    """
    job_id = payload["job_id"]
    store = context.store
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    if redelivered and gave_up_after_redelivery(store, job_id, redelivery_key):
        raise Ignore()
    if not begin(job_id, step):
        _forget(job_id)
        raise Ignore()
    started = time.perf_counter()
    try:
        out = fn(context, payload)
    except JobGone:
        _forget(job_id)
        raise Ignore() from None
    except ChunkAlreadyDone:
        raise Ignore() from None
    except (redis.ConnectionError, redis.TimeoutError):
        raise
    except Exception as exc:
        if store.state(job_id) != "running":
            # Cancelled (files removed) while the step ran: its failure is moot.
            _forget(job_id)
            raise Ignore() from None
        if isinstance(exc, StepFailed):
            _fail(job_id, step, exc.kind, str(exc))
            raise Ignore() from None
        if isinstance(exc, SoftTimeLimitExceeded):
            limit = context.settings.step_time_limit_seconds
            _fail(job_id, step, "timeout", f"the {step} step ran over {limit} s")
            raise Ignore() from None
        _fail(job_id, step, "internal", f"{type(exc).__name__}: {exc}")
        raise
    out.setdefault("timings", {})[step] = round(time.perf_counter() - started, 4)
    return out


def gave_up_after_redelivery(store: JobStore, job_id: str, key: str) -> bool:
    """Count a redelivery (the last worker died mid-step); fail the job past the limit.

    ``key`` is the step, or ``<stage>:chunk-<n>`` for one chunk of a video.
    """
    count = store.count_redelivery(job_id, key)
    if count <= MAX_REDELIVERIES:  # 0: the job is gone; step_started refuses it next
        return False
    step = key.split(":", 1)[0]
    what = key.replace(":chunk-", " of chunk ") if ":" in key else step
    if store.fail(
        job_id,
        step,
        "worker-lost",
        f"the worker running {what} died {count} times on this job; not retried again",
    ):
        notify(job_id)
    return True


def _fail(job_id: str, step: str, kind: str, detail: str) -> None:
    if context.store.fail(job_id, step, kind, detail):
        notify(job_id)
    _forget(job_id)


def notify(job_id: str) -> None:
    """Queue the job's callback, if it asked for one (sent by ``tasks.notify``)."""
    if context.store.callback_url(job_id):
        app.send_task(TASK_NOTIFY, args=(job_id,), queue=QUEUE_NOTIFY)


def _forget(job_id: str) -> None:
    """Remove a cancelled or vanished job's files (a step may have re-made some), and a
    failed job's working files (a video's decoded frames and segments); its upload stays.
    """
    state = context.store.state(job_id)
    if state in (None, "cancelled"):
        context.storage.remove_job(job_id)
    elif state == "failed":
        shutil.rmtree(context.storage.job_dir(job_id) / "work", ignore_errors=True)
