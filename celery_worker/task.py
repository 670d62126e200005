"""The task base class and the step decorators: the bookkeeping every step shares.

A step is a plain function ``fn(ctx, payload) -> payload``; ``job_step`` and
``chunk_step`` declare it as a Celery task without any app. ``register_tasks``
puts every declared task on one app (``celery_worker.worker.create_worker_app``),
whose ``StepTask`` base gives each run that app's context: settings and
collaborators never come from module globals, so a test can build a worker app
with its own settings.

Before the work: refuse to run for a job that is no longer active (cancelled,
deleted, expired) and mark the step started. After: record its time and mark it
finished. On failure: mark the job failed with a reason (see ``errors``). A step
runs again from scratch when its worker dies (acks_late), so steps only write
whole files under fixed names: running twice gives the same result.
"""

from __future__ import annotations

import functools
import importlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from celery import Celery, Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from celery_worker import metrics
from celery_worker.errors import ChunkAlreadyDone, JobGone, StepFailed

if TYPE_CHECKING:
    from celery_worker.context import WorkerContext

# One module per queue; importing them declares their tasks.
TASK_MODULES = (
    "celery_worker.tasks.preprocess",
    "celery_worker.tasks.inference",
    "celery_worker.tasks.postprocess",
    "celery_worker.tasks.sam",
    "celery_worker.tasks.notify",
)
# A step whose worker died this many times is not tried again: the input probably
# kills the worker (out of memory, a crash in native code), and retrying forever
# would block the queue.
MAX_REDELIVERIES = 2
# Transient Redis trouble: Celery retries the step with back-off.
REDIS_RETRY = {
    "autoretry_for": (redis.ConnectionError, redis.TimeoutError),
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "max_retries": 8,
}

F = TypeVar("F", bound=Callable[..., Any])
StepFunction = Callable[["WorkerContext", Any], Any]


class StepTask(Task):  # type: ignore[misc]
    """Every task of the workers: ``self.ctx`` is its app's context, built on first use."""

    @property
    def ctx(self) -> WorkerContext:
        context: WorkerContext = self.app.context
        return context


@dataclass(frozen=True)
class _Declared:
    name: str
    body: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)


_DECLARED: dict[str, _Declared] = {}


def worker_task(name: str, **options: Any) -> Callable[[F], F]:
    """Declare ``body(task, *args)`` as the Celery task ``name`` (bound, on ``StepTask``)."""

    def declare(body: F) -> F:
        _DECLARED[name] = _Declared(name, body, options)
        return body

    return declare


def register_tasks(app: Celery) -> None:
    """Put every declared task on ``app``; each run gets ``app``'s context."""
    for module in TASK_MODULES:
        importlib.import_module(module)
    for declared in _DECLARED.values():
        app.task(name=declared.name, bind=True, base=StepTask, **declared.options)(declared.body)


def job_step(
    task_name: str,
    step: str,
    final: bool = False,
    finishes_step: bool = True,
    continues_stage: bool = False,
) -> Callable[[StepFunction], StepFunction]:
    """Declare ``fn(ctx, payload) -> payload`` as the Celery task ``task_name``.

    A ``final`` step ends the job itself (``jobs.succeed``) and raises ``JobGone``
    when that finds the job cancelled. A step that only starts work others finish
    (a video's planning step) passes ``finishes_step=False``; one that ends a stage
    chunks began (a video's finishing step) passes ``continues_stage=True``, so the
    stage keeps its start time.
    """

    def decorate(fn: StepFunction) -> StepFunction:
        @worker_task(task_name, **REDIS_RETRY)
        @functools.wraps(fn)
        def run(task: StepTask, payload: Any) -> Any:
            ctx = task.ctx
            job_id = payload["job_id"]
            jobs = ctx.store.jobs
            begin = jobs.stage_started if continues_stage else jobs.step_started
            out = _guarded(task, fn, payload, step, step, begin)
            if final:
                ctx.ended(job_id)
            elif finishes_step and not jobs.step_finished(job_id, step):
                forget(ctx, payload["tenant"], job_id)
                raise Ignore()
            return out

        return fn

    return decorate


def chunk_step(task_name: str, stage: str) -> Callable[[StepFunction], StepFunction]:
    """Declare a step that works on one chunk of a video (``payload["chunk"]``).

    Many run at once for one job: the stage is marked started by the first, and
    finished by whoever completes its last chunk (``video.chunks.chunk_finished``).
    Deaths are counted per chunk, so one chunk that kills its worker fails the job,
    while a worker lost once on each of many chunks does not.
    """

    def decorate(fn: StepFunction) -> StepFunction:
        @worker_task(task_name, **REDIS_RETRY)
        @functools.wraps(fn)
        def run(task: StepTask, payload: Any) -> Any:
            key = f"{stage}:chunk-{payload['chunk']['index']}"
            return _guarded(task, fn, payload, stage, key, task.ctx.store.jobs.stage_started)

        return fn

    return decorate


def _guarded(
    task: StepTask,
    fn: StepFunction,
    payload: Any,
    step: str,
    redelivery_key: str,
    begin: Callable[[str, str], bool],
) -> Any:
    """Run ``fn`` for an active job; turn its failures into the job's failure.

    Raises ``Ignore`` (the chain stops quietly) when the job is no longer active or
    failed here; re-raises Redis errors (retried) and bugs (after failing the job).
    """
    ctx = task.ctx
    job_id = payload["job_id"]
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    if redelivered and gave_up_after_redelivery(ctx, job_id, redelivery_key):
        raise Ignore()
    if not begin(job_id, step):
        forget(ctx, payload["tenant"], job_id)
        raise Ignore()
    started = time.perf_counter()
    try:
        out = fn(ctx, payload)
    except JobGone:
        forget(ctx, payload["tenant"], job_id)
        raise Ignore() from None
    except ChunkAlreadyDone:
        raise Ignore() from None
    except (redis.ConnectionError, redis.TimeoutError):
        raise
    except Exception as exc:
        if ctx.store.jobs.state(job_id) != "running":
            # Cancelled (files removed) while the step ran: its failure is moot.
            forget(ctx, payload["tenant"], job_id)
            raise Ignore() from None
        if isinstance(exc, StepFailed):
            _fail(ctx, payload, step, exc.kind, str(exc))
            raise Ignore() from None
        if isinstance(exc, SoftTimeLimitExceeded):
            limit = ctx.settings.step_time_limit_seconds
            _fail(ctx, payload, step, "timeout", f"the {step} step ran over {limit} s")
            raise Ignore() from None
        _fail(ctx, payload, step, "internal", f"{type(exc).__name__}: {exc}")
        raise
    seconds = time.perf_counter() - started
    out.setdefault("timings", {})[step] = round(seconds, 4)
    queue = (task.request.delivery_info or {}).get("routing_key") or step
    metrics.step_done(step, payload, seconds, str(queue))
    return out


def gave_up_after_redelivery(ctx: WorkerContext, job_id: str, key: str) -> bool:
    """Count a redelivery (the last worker died mid-step); fail the job past the limit.

    ``key`` is the step, or ``<stage>:chunk-<n>`` for one chunk of a video.
    """
    jobs = ctx.store.jobs
    count = jobs.count_redelivery(job_id, key)
    if count <= MAX_REDELIVERIES:  # 0: the job is gone; step_started refuses it next
        return False
    step = key.split(":", 1)[0]
    what = key.replace(":chunk-", " of chunk ") if ":" in key else step
    if jobs.fail(
        job_id,
        step,
        "worker-lost",
        f"the worker running {what} died {count} times on this job; not retried again",
    ):
        ctx.ended(job_id)
    return True


def _fail(ctx: WorkerContext, payload: Any, step: str, kind: str, detail: str) -> None:
    job_id = payload["job_id"]
    if ctx.store.jobs.fail(job_id, step, kind, detail):
        ctx.ended(job_id)
    forget(ctx, payload["tenant"], job_id)


def forget(ctx: WorkerContext, tenant: str, job_id: str) -> None:
    """Remove a cancelled or vanished job's files (a step may have re-made some), and a
    failed job's working files and any artifact it had begun (a video's decoded frames,
    segments, a half-made MP4: never counted as stored); its upload stays.
    """
    state = ctx.store.jobs.state(job_id)
    if state in (None, "cancelled"):
        ctx.storage.remove_job(tenant, job_id)
    elif state == "failed":
        folder = ctx.storage.job_dir(tenant, job_id)
        shutil.rmtree(folder / "work", ignore_errors=True)
        shutil.rmtree(folder / "artifacts", ignore_errors=True)
