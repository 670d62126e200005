"""The Celery app of the workers: ``celery -A celery_worker.app worker -Q <queue>``.

Queues, routes and delivery guarantees come from ``common.celery_app`` (shared
with the API). Inference workers load their models once per process, after the
fork, and report them to Redis so the API knows which pipelines can run.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import signals

from celery_worker.context import WorkerContext
from common.celery_app import make_celery
from common.contract import QUEUE_INFERENCE
from common.jobstore import now_iso
from common.settings import Settings

log = logging.getLogger(__name__)

settings = Settings.from_env()
context = WorkerContext.build(settings)
app = make_celery(settings, name="cvjobs-worker")
app.conf.include = [
    "celery_worker.tasks.preprocess",
    "celery_worker.tasks.inference",
    "celery_worker.tasks.postprocess",
    "celery_worker.tasks.video",
    "celery_worker.tasks.notify",
]

_serves_inference = False
_stop_heartbeat = threading.Event()


@signals.celeryd_init.connect
def _remember_queues(options: dict[str, Any], **_: Any) -> None:
    """Runs in the parent before the fork: note whether this worker serves inference."""
    global _serves_inference
    queues = options.get("queues") or []
    if isinstance(queues, str):
        queues = queues.split(",")
    _serves_inference = not queues or QUEUE_INFERENCE in queues


@signals.worker_process_init.connect
def _load_models(**_: Any) -> None:
    """In each pool process: load the models once, then keep reporting them."""
    # One worker process is one unit of parallelism: OpenCV's own threads would only
    # compete with the other workers (and the model's threads) for the same cores.
    import cv2

    cv2.setNumThreads(1)
    if not _serves_inference:
        return
    if settings.torch_threads > 0:
        import torch

        torch.set_num_threads(settings.torch_threads)
    report = context.models.load_all()
    name = f"{QUEUE_INFERENCE}@{socket.gethostname()}:{os.getpid()}"

    def beat() -> None:
        while True:
            info = {
                "name": name,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "queues": [QUEUE_INFERENCE],
                "models": report,
                "updated_at": now_iso(),
            }
            try:
                context.store.report_worker(name, info, 3 * settings.worker_heartbeat_seconds)
            except Exception:  # a heartbeat must never kill the worker; log and try again
                log.exception("could not report models to Redis")
            if _stop_heartbeat.wait(settings.worker_heartbeat_seconds):
                return

    threading.Thread(target=beat, name="model-heartbeat", daemon=True).start()


@signals.worker_process_shutdown.connect
def _forget_worker(**_: Any) -> None:
    _stop_heartbeat.set()
    if _serves_inference:
        name = f"{QUEUE_INFERENCE}@{socket.gethostname()}:{os.getpid()}"
        try:
            context.store.forget_worker(name)
        except Exception:
            log.warning("could not remove the model report of %s", name)
