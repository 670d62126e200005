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
import logging
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
from celery_worker.intake import Delivery, forward
from celery_worker.models import batch_capacity

if TYPE_CHECKING:
    from celery_worker.context import WorkerContext

log = logging.getLogger(__name__)

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


BatchFunction = Callable[["WorkerContext", list[Any]], list[Any]]


def batch_step(task_name: str, step: str) -> Callable[[BatchFunction], BatchFunction]:
    """Declare ``fn(ctx, payloads) -> outcomes`` as the Celery task ``task_name``: a step
    of image jobs that runs the queued messages of its kind together (``intake``).

    ``fn`` answers one outcome per payload, in order: the next payload, or the exception
    that item alone raised (a bad item fails alone). Each message is bookkept as a
    ``job_step``'s is, and its timings say how big its batch was (``<step>_batch``) and
    how long the step waited for it to fill (``<step>_wait``). Celery's message is
    returned (Celery publishes what follows and acknowledges it); each message taken
    besides is finished here, as soon as its own result is written.
    """

    def decorate(fn: BatchFunction) -> BatchFunction:
        @worker_task(task_name, **REDIS_RETRY)
        @functools.wraps(fn)
        def run(task: StepTask, payload: Any) -> Any:
            ctx = task.ctx
            leader = Delivery.of_request(task_name, task.request, payload)
            queue = str(leader.delivery_info.get("routing_key") or step)
            most, wait = batch_limit(ctx, payload)
            started = time.perf_counter()
            followers, stray = ctx.intake.take(queue, task_name, most - 1, wait)
            waited = time.perf_counter() - started
            try:
                out = _run_batch(ctx, fn, [leader, *followers], step, queue, waited)
            except BaseException:
                for delivery in [*followers, *([stray] if stray else [])]:
                    ctx.intake.give_back(delivery)  # not run: back on the queue
                raise
            if isinstance(out, BaseException):
                if stray is not None:
                    ctx.intake.run_alone(stray)
                raise out
            if stray is not None:
                # The next message of another task runs here and now (it was taken): the
                # chain of this one goes on first, so its job does not wait for that.
                forward(ctx.celery, leader, out)
                ctx.intake.run_alone(stray)
                raise Ignore()
            return out

        return fn

    return decorate


def batch_limit(ctx: WorkerContext, payload: Any) -> tuple[int, float]:
    """How many messages the step of ``payload``'s model takes at most, and how many
    seconds it waits for them (``max_batch``, ``max_wait_ms`` of config/models.yaml)."""
    spec = ctx.models.specs.get(str(payload.get("model_name")))
    if spec is None or spec.config is None:
        return 1, 0.0
    return batch_capacity(spec), spec.config.max_wait_ms / 1000


def _run_batch(
    ctx: WorkerContext,
    fn: BatchFunction,
    members: list[Delivery],
    step: str,
    queue: str,
    waited: float,
) -> Any:
    """The members admitted, run together, each outcome recorded and the followers
    finished together. Returns the leader's outcome: its next payload or the exception
    to raise. The members' steps are marked started, and finished, in one transaction
    each; the followers' next steps are confirmed by RabbitMQ once for all."""
    jobs = ctx.store.jobs
    outcomes: dict[int, Any] = {}

    def refused(index: int, member: Delivery) -> None:
        forget(ctx, member.payload["tenant"], member.payload["job_id"])
        outcomes[index] = Ignore()

    candidates: list[tuple[int, Delivery]] = []
    for index, member in enumerate(members):
        job_id = member.payload["job_id"]
        if member.redelivered and gave_up_after_redelivery(ctx, job_id, step):
            outcomes[index] = Ignore()
        else:
            candidates.append((index, member))
    admitted: list[tuple[int, Delivery]] = []
    started_ok = jobs.steps_started([m.payload["job_id"] for _, m in candidates], step)
    for (index, member), ok in zip(candidates, started_ok, strict=True):
        if ok:
            admitted.append((index, member))
        else:
            refused(index, member)
    started = time.perf_counter()
    try:
        results = fn(ctx, [m.payload for _, m in admitted]) if admitted else []
    except Exception as exc:  # the whole batch (a time limit): each of its jobs fails
        results = [exc] * len(admitted)
    seconds = time.perf_counter() - started
    done: list[tuple[int, Delivery, Any]] = []
    for (index, member), result in zip(admitted, results, strict=True):
        if isinstance(result, Exception):
            outcomes[index] = _outcome_of(ctx, member.payload, step, result)
            continue
        _recorded(result, member.payload, step, seconds, queue)
        result["timings"][f"{step}_batch"] = len(admitted)
        result["timings"][f"{step}_wait"] = round(waited, 4)
        done.append((index, member, result))
    finished_ok = jobs.steps_finished([m.payload["job_id"] for _, m, _ in done], step)
    for (index, member, result), ok in zip(done, finished_ok, strict=True):
        if ok:
            outcomes[index] = result
        else:  # cancelled meanwhile
            refused(index, member)
    _settle(ctx, [(member, outcomes[index]) for index, member in enumerate(members)])
    return outcomes[0]


def _settle(ctx: WorkerContext, ended: list[tuple[Delivery, Any]]) -> None:
    """The followers' messages once their outcomes are known: their chains go on and
    they are acknowledged, together; Redis trouble puts one back on its queue. (Celery
    settles the leader, whose ``message`` is None.)"""
    finished: list[tuple[Delivery, Any]] = []
    for member, outcome in ended:
        if member.message is None:
            continue
        if isinstance(outcome, (redis.ConnectionError, redis.TimeoutError)):
            ctx.intake.give_back(member)
        elif isinstance(outcome, BaseException):
            if not isinstance(outcome, Ignore):
                log.error("step %s of job %s failed: %r", member.task, member.id, outcome)
            finished.append((member, None))
        else:
            finished.append((member, outcome))
    ctx.intake.finish_all(finished)


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
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    if not _admitted(ctx, payload, redelivered, redelivery_key, step, begin):
        raise Ignore()
    started = time.perf_counter()
    try:
        out = fn(ctx, payload)
    except Exception as exc:
        outcome = _outcome_of(ctx, payload, step, exc)
        if outcome is exc:
            raise
        raise outcome from None
    queue = (task.request.delivery_info or {}).get("routing_key") or step
    _recorded(out, payload, step, time.perf_counter() - started, str(queue))
    return out


def _admitted(
    ctx: WorkerContext,
    payload: Any,
    redelivered: bool,
    redelivery_key: str,
    step: str,
    begin: Callable[[str, str], bool],
) -> bool:
    """Whether the step may run: its job active (marked started now) and, for a message
    redelivered after its worker died, not past the redelivery limit."""
    job_id = payload["job_id"]
    if redelivered and gave_up_after_redelivery(ctx, job_id, redelivery_key):
        return False
    if not begin(job_id, step):
        forget(ctx, payload["tenant"], job_id)
        return False
    return True


def _outcome_of(ctx: WorkerContext, payload: Any, step: str, exc: Exception) -> BaseException:
    """What a step that raised ``exc`` raises in turn: ``Ignore`` once the job's end is
    recorded (or it needs none), ``exc`` itself for Redis trouble (retried) and for bugs
    (after the job is failed with kind ``internal``)."""
    job_id = payload["job_id"]
    if isinstance(exc, JobGone):
        forget(ctx, payload["tenant"], job_id)
        return _ignored()
    if isinstance(exc, ChunkAlreadyDone):
        return _ignored()
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return exc
    if ctx.store.jobs.state(job_id) != "running":
        # Cancelled (files removed) while the step ran: its failure is moot.
        forget(ctx, payload["tenant"], job_id)
        return _ignored()
    if isinstance(exc, StepFailed):
        _fail(ctx, payload, step, exc.kind, str(exc))
        return _ignored()
    if isinstance(exc, SoftTimeLimitExceeded):
        limit = ctx.settings.step_time_limit_seconds
        _fail(ctx, payload, step, "timeout", f"the {step} step ran over {limit} s")
        return _ignored()
    _fail(ctx, payload, step, "internal", f"{type(exc).__name__}: {exc}")
    return exc


def _ignored() -> BaseException:
    ignored: BaseException = Ignore()
    return ignored


def _recorded(out: Any, payload: Any, step: str, seconds: float, queue: str) -> None:
    out.setdefault("timings", {})[step] = round(seconds, 4)
    metrics.step_done(step, payload, seconds, queue)


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
