"""The service's Prometheus metrics: one definition of each, shared by the API and workers.

Every process of a service writes its samples to files in that service's metrics
directory (prometheus-client's *multiprocess mode*), and whoever answers a scrape
reads and adds up the files of every process: the API's ``/metrics`` those of its
gunicorn workers, a worker service's exporter those of its Celery main process and
prefork children. :func:`use_directory` turns the mode on in one process (before any
sample is taken) and is what the API's and workers' entry points call; without it a
process keeps its samples in memory (unit tests, one-process tools).

Directories are per service *instance*: ``<CV_METRICS_DIR>/<service>-<pid of the
service's main process>``. A new start gets a fresh directory and removes those of
instances whose main process is gone, so counters start from zero at every start (as
Prometheus expects of a restart) and files of old runs never add up. A child that
exits removes its live gauges (``mark_process_dead``); its counters stay in the sum.

Every metric here has labels: a labelled metric takes its storage when a label set is
first used, so the mode chosen by :func:`use_directory` applies to all of them.

Tenants are a label of the job counters, bounded by :class:`TenantLabels`: tenants
are made only by admins, and past ``CV_METRICS_TENANT_LIMIT`` distinct tenants in one
process the rest are counted as ``other``.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

NAMESPACE = "cv"
# Seconds: from a 1 ms API call to a step near its 300 s limit.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
OTHER_TENANT = "other"

# Only these metrics live in the shared registry below; the scrape side builds its own.
REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "http_requests",
    "HTTP requests answered, by operation (the spec's operationId) and status.",
    ["operation", "method", "status"],
    namespace=NAMESPACE,
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Seconds from a request's first byte to its answer's last, by operation.",
    ["operation", "method"],
    namespace=NAMESPACE,
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
JOBS_SUBMITTED = Counter(
    "jobs_submitted",
    "Jobs recorded by the API (single jobs and batch members), by pipeline, tenant, media.",
    ["pipeline", "tenant", "media"],
    namespace=NAMESPACE,
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "jobs_finished",
    "Jobs that ended: outcome succeeded, failed (with its error kind) or cancelled.",
    ["pipeline", "tenant", "outcome", "error_kind"],
    namespace=NAMESPACE,
    registry=REGISTRY,
)
STEP_DURATION = Histogram(
    "step_duration_seconds",
    "Seconds one step (or one video chunk's step) ran on a worker, by step and model.",
    ["step", "model"],
    namespace=NAMESPACE,
    buckets=STEP_BUCKETS,
    registry=REGISTRY,
)
VIDEO_FRAMES = Counter(
    "video_frames",
    "Video frames through a chunk step; rate() of it is the frames per second.",
    ["step", "model"],
    namespace=NAMESPACE,
    registry=REGISTRY,
)
VIDEO_FPS = Gauge(
    "video_chunk_frames_per_second",
    "Frames per second of the last video chunk a step finished (any process).",
    ["step", "model"],
    namespace=NAMESPACE,
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
MODEL_LOAD = Gauge(
    "model_load_seconds",
    "Seconds the last load (with its warm-up pass) of a model took in a worker process.",
    ["model", "device"],
    namespace=NAMESPACE,
    multiprocess_mode="mostrecent",
    registry=REGISTRY,
)
INFERENCE_BATCH = Histogram(
    "inference_batch_size",
    "Pictures given to the model at once (an image job is 1, a video up to max_batch).",
    ["model"],
    namespace=NAMESPACE,
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
GPU_MEMORY = Gauge(
    "gpu_memory_allocated_bytes",
    "torch.cuda.memory_allocated of the live inference processes on a CUDA device.",
    ["device"],
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
    registry=REGISTRY,
)


def use_directory(directory: Path) -> None:
    """Keep this process's samples in files under ``directory`` (multiprocess mode).

    Call it before the process takes a sample; forked children inherit it (each writes
    its own files, named after its pid).
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus-client picks its value class from the variable at import; this
        # process imported it before knowing its directory.
        values.ValueClass = values.MultiProcessValue()


def instance_directory(base: Path, service: str, main_pid: int) -> Path:
    """A fresh directory for one instance of ``service``; removes those of dead instances.

    ``main_pid`` is the service's main process (gunicorn's master, Celery's main
    process): every process of the instance names the same directory.
    """
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob(f"{service}-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != main_pid and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return base / f"{service}-{main_pid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_exited(pid: int) -> None:
    """A process of this service exited: drop its live gauges (its counters stay)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        mark_process_dead(pid, directory)


def scrape_registry() -> CollectorRegistry:
    """A registry for one exporter: every process's files in multiprocess mode, else this
    process's samples; the caller may add collectors of its own to it."""
    registry = CollectorRegistry(auto_describe=False)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_Forward(REGISTRY))
    return registry


class _Forward(Collector):
    """The samples of another registry (the shared one stays free of per-scrape parts)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.inner = registry

    def collect(self) -> Iterable[Metric]:
        return list(self.inner.collect())


class TenantLabels:
    """The tenant label of a sample: the tenant's name for the first ``limit`` tenants this
    process sees, ``other`` past them (0: no limit), so no tenant count can blow up the
    series Prometheus holds."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, tenant: str | None) -> str:
        name = tenant or "default"
        with self._lock:
            if name in self._seen:
                return name
            if self.limit and len(self._seen) >= self.limit:
                return OTHER_TENANT
            self._seen.add(name)
            return name


# The job counters' tenant labels in this process (CV_METRICS_TENANT_LIMIT sets the limit).
TENANTS = TenantLabels(50)


def job_finished(
    labels: TenantLabels, pipeline: str, tenant: str | None, outcome: str, error_kind: str = ""
) -> None:
    """Count one job that ended (``outcome``: succeeded, failed, cancelled)."""
    JOBS_FINISHED.labels(pipeline or "unknown", labels(tenant), outcome, error_kind).inc()


def job_submitted(labels: TenantLabels, pipeline: str, tenant: str | None, media: str) -> None:
    """Count one job the API recorded (``media``: image or video)."""
    JOBS_SUBMITTED.labels(pipeline, labels(tenant), media).inc()


def metric_names(registry: CollectorRegistry = REGISTRY) -> set[str]:
    """Every sample name ``registry`` exposes (``cv_step_duration_seconds_bucket``, ...)."""
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",),
        }.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names
