"""The workers' app factory: ``create_worker_app(settings)`` builds a Celery app with its tasks.

Queues, routes and delivery guarantees come from ``common.celery_app`` (shared
with the API). Nothing is built at import: the app holds its Settings, and its
``WorkerContext`` (Redis, storage, catalogue, models) is built on first use, in
each process. The CLI's app is ``celery_worker.app``.

Process lifecycle, wired to this app's worker only:

- main process (``worker_ready``): starts the upkeep timer (``celery_worker.upkeep``);
- each pool process (``worker_process_init``): OpenCV on one thread; on inference
  workers, PyTorch's threads set, every model loaded once (after the fork, so CUDA
  initialises in the child) and reported to Redis every heartbeat, so the API
  knows which pipelines can run.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
from typing import Any

from celery import Celery, signals

from celery_worker import metrics
from celery_worker.context import WorkerContext
from celery_worker.task import register_tasks
from celery_worker.upkeep import UpkeepTimer
from common.celery_app import celery_config
from common.clock import now_iso
from common.contract import QUEUE_INFERENCE
from common.settings import Settings

log = logging.getLogger(__name__)


class WorkerApp(Celery):  # type: ignore[misc]
    """A worker's Celery app: its Settings, and the context built from them on first use."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("cvjobs-worker")
        self.conf.update(celery_config(settings))
        self.settings = settings
        self._context: WorkerContext | None = None

    @property
    def context(self) -> WorkerContext:
        """Built on first use in each process. No lock: a pool process forked while another
        thread held one would wait for ever, and two threads racing here at most build one
        context too many (it connects to nothing until used)."""
        if self._context is None:
            self._context = WorkerContext.build(self.settings, self)
        return self._context


def create_worker_app(settings: Settings | None = None) -> WorkerApp:
    """A worker app with every task registered; tests pass their own ``settings``.

    Built from the environment (the CLI's app), it refuses guessable broker and Redis
    passwords before anything connects (Celery would only log an error raised later, in
    a signal handler)."""
    if settings is None:
        settings = Settings.from_env()
        settings.require_strong_secrets()
    app = WorkerApp(settings)
    register_tasks(app)
    _Lifecycle(app).connect()
    return app


class _Lifecycle:
    """Signal handlers of one app: they act only in a worker started with that app."""

    def __init__(self, app: WorkerApp) -> None:
        self.app = app
        self.serving = False  # a worker runs this app (set in the main process, pre-fork)
        self.serves_inference = False
        self.upkeep: UpkeepTimer | None = None
        self.heartbeat_stop = threading.Event()
        self.queues: list[str] = []

    def connect(self) -> None:
        signals.celeryd_init.connect(self.init, weak=False)
        signals.worker_ready.connect(self.ready, weak=False)
        signals.worker_shutdown.connect(self.shutdown, weak=False)
        signals.worker_process_init.connect(self.process_init, weak=False)
        signals.worker_process_shutdown.connect(self.process_shutdown, weak=False)

    def init(self, instance: Any = None, options: dict[str, Any] | None = None, **_: Any) -> None:
        """Main process, before the fork: note whether this worker serves inference."""
        if getattr(instance, "app", None) is not self.app:
            return
        self.serving = True
        queues = (options or {}).get("queues") or []
        if isinstance(queues, str):
            queues = queues.split(",")
        self.serves_inference = not queues or QUEUE_INFERENCE in queues
        self.queues = list(queues)
        metrics.init_service(self.app.settings, self.queues)

    def ready(self, sender: Any = None, **_: Any) -> None:
        if not self.serving or getattr(sender, "app", None) is not self.app:
            return
        self.upkeep = UpkeepTimer(self.app.context)
        self.upkeep.start()
        metrics.start_exporter(self.app.settings, self.queues)

    def shutdown(self, **_: Any) -> None:
        if self.upkeep is not None:
            self.upkeep.stop()

    def process_init(self, **_: Any) -> None:
        """In each pool process: load the models once, then keep reporting them."""
        if not self.serving:
            return
        # One worker process is one unit of parallelism: OpenCV's own threads would only
        # compete with the other workers (and the model's threads) for the same cores.
        import cv2

        cv2.setNumThreads(1)
        if not self.serves_inference:
            gc.freeze()  # see below
            return
        settings = self.app.settings
        if settings.torch_threads > 0:
            import torch

            torch.set_num_threads(settings.torch_threads)
        ctx = self.app.context
        report = ctx.models.load_all()
        # Torch, Ultralytics and the models are loaded for good: their objects move out of
        # the garbage collector's sight, so the full collections that steps building many
        # small objects trigger (a noisy mask's thousands of outlines) stop walking them.
        gc.freeze()
        threading.Thread(
            target=self._beat, args=(ctx, report), name="model-heartbeat", daemon=True
        ).start()

    def _beat(self, ctx: WorkerContext, report: dict[str, Any]) -> None:
        period = ctx.settings.worker_heartbeat_seconds
        while True:
            info = {
                "name": _worker_name(),
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "queues": [QUEUE_INFERENCE],
                "models": report,
                "updated_at": now_iso(),
            }
            try:
                ctx.store.workers.report(_worker_name(), info, 3 * period)
            except Exception:  # a heartbeat must never kill the worker; log and try again
                log.exception("could not report models to Redis")
            if self.heartbeat_stop.wait(period):
                return

    def process_shutdown(self, **_: Any) -> None:
        self.heartbeat_stop.set()
        if self.serving:
            metrics.child_exited()
        if self.serving and self.serves_inference:
            try:
                self.app.context.store.workers.forget(_worker_name())
            except Exception:  # the report expires by itself; never fail a shutdown
                log.warning("could not remove the model report of %s", _worker_name())


def _worker_name() -> str:
    return f"{QUEUE_INFERENCE}@{socket.gethostname()}:{os.getpid()}"
