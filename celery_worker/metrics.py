"""The workers' side of the metrics: step times, job outcomes, and one exporter per service.

A worker service (one ``celery worker`` command: its main process and prefork
children) keeps its samples in its own multiprocess folder (``common.metrics``), made
by the main process before the fork; its children inherit it. The main process serves
them over HTTP on ``CV_WORKER_METRICS_HOST``:``CV_WORKER_METRICS_PORT`` + the queue's
place in ``common.contract.QUEUES`` (preprocess 9101, inference 9102, postprocess
9103, notify 9104 by default), which Prometheus scrapes. A port already taken (a second
worker of the same queue on one host) is logged and that service goes unexported:
give it another ``CV_WORKER_METRICS_PORT``.

The hooks here are called by ``celery_worker.task`` (a step done), ``context`` (a
job ended), ``models`` (a model loaded) and ``video.frames`` (a batch of frames).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from prometheus_client import start_http_server

from common.contract import QUEUES
from common.logs import event, event_log_target, install_event_log
from common.metrics import (
    GPU_MEMORY,
    INFERENCE_BATCH,
    MODEL_LOAD,
    STEP_DURATION,
    TENANTS,
    VIDEO_FPS,
    VIDEO_FRAMES,
    instance_directory,
    job_finished,
    process_exited,
    scrape_registry,
    use_directory,
)
from common.settings import Settings

log = logging.getLogger(__name__)


def service_name(queues: list[str]) -> str:
    """``worker-inference``, ``worker-preprocess+postprocess``; ``worker-all`` for every queue."""
    return "worker-" + ("+".join(queues) if queues else "all")


def exporter_port(settings: Settings, queues: list[str]) -> int:
    """The service's port: the base + the place of its first queue (0: none)."""
    if not settings.worker_metrics_port:
        return 0
    first = queues[0] if queues and queues[0] in QUEUES else QUEUES[0]
    return settings.worker_metrics_port + QUEUES.index(first)


def init_service(settings: Settings, queues: list[str]) -> None:
    """Main process, before the fork: this instance's samples folder and the event log."""
    name = service_name(queues)
    base = settings.resolve(settings.metrics_dir)
    use_directory(instance_directory(base, name, os.getpid()))
    TENANTS.limit = settings.metrics_tenant_limit
    install_event_log(event_log_target(settings), name)


def start_exporter(settings: Settings, queues: list[str]) -> int:
    """Main process, once the worker is ready: serve every process's samples. Returns the
    port, or 0 when there is none (disabled, or taken)."""
    port = exporter_port(settings, queues)
    if not port:
        return 0
    try:
        start_http_server(port, addr=settings.worker_metrics_host, registry=scrape_registry())
    except OSError as exc:
        log.warning(
            "metrics: cannot listen on %s:%d (%s); set CV_WORKER_METRICS_PORT for this worker",
            settings.worker_metrics_host,
            port,
            exc,
        )
        return 0
    log.info("metrics: serving on http://%s:%d/metrics", settings.worker_metrics_host, port)
    return port


def child_exited() -> None:
    """A pool process is ending: its live gauges (GPU memory) leave the sums."""
    process_exited(os.getpid())


def step_done(step: str, payload: dict[str, Any], seconds: float, queue: str) -> None:
    """One step (or one chunk's step) finished for a job: its time, frames, batch, event."""
    model = str(payload.get("model_name") or "")
    STEP_DURATION.labels(step, model).observe(seconds)
    chunk = payload.get("chunk")
    if isinstance(chunk, dict):
        frames = int(chunk.get("count") or 0)
        VIDEO_FRAMES.labels(step, model).inc(frames)
        if seconds > 0 and frames:
            VIDEO_FPS.labels(step, model).set(frames / seconds)
    elif step == "inference":
        INFERENCE_BATCH.labels(model).observe(1)  # an image is one picture
    if step == "inference":
        gpu_memory()
    event(
        "step.finished",
        job_id=payload.get("job_id"),
        tenant=payload.get("tenant"),
        pipeline=payload.get("pipeline"),
        step=step,
        queue=queue,
        chunk=chunk.get("index") if isinstance(chunk, dict) else None,
        seconds=round(seconds, 4),
    )


def job_ended(record: dict[str, Any] | None) -> None:
    """A job succeeded or failed on a worker (or was failed by upkeep)."""
    if not record:
        return
    state = str(record.get("state") or "")
    found = record.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    kind = str(error.get("kind") or "") if state == "failed" else ""
    job_finished(TENANTS, str(record.get("pipeline") or ""), record.get("tenant"), state, kind)
    event(
        "job.finished",
        job_id=record.get("id"),
        tenant=record.get("tenant"),
        pipeline=record.get("pipeline"),
        outcome=state,
        error_kind=kind or None,
        step=error.get("step") or None,
    )


def model_loaded(model: str, device: str, seconds: float) -> None:
    MODEL_LOAD.labels(model, device).set(seconds)
    event("model.loaded", model=model, device=device, seconds=round(seconds, 4))


def batch_run(model: str, size: int) -> None:
    INFERENCE_BATCH.labels(model).observe(size)


def gpu_memory() -> None:
    """torch.cuda.memory_allocated per device, where this process initialised CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return  # a CPU worker: no series at all
    for index in range(torch.cuda.device_count()):
        GPU_MEMORY.labels(f"cuda:{index}").set(torch.cuda.memory_allocated(index))
