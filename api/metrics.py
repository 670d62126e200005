"""The API's side of the metrics: HTTP requests by operation, and what a scrape reads live.

- :class:`HttpMetrics`, ASGI middleware outside everything but Starlette's last-resort
  error handler: every answer is counted, the refusals of the outer middleware (Host,
  sizes, slow bodies) too. Its ``operation`` label is the spec's operationId, found from
  the method and the spec's path templates (never the raw path, whose ids would make a
  series per job); a path the spec lacks is ``unmatched``, Swagger UI's pages ``docs``.
- :class:`LiveCollector`: at scrape time, each queue's ready messages and consumers
  (a passive ``queue_declare`` on RabbitMQ: no management plugin needed) and the
  number of jobs per active state with the age of the oldest (sizes of the job store's
  per-state sets), kept ``CV_METRICS_CACHE_SECONDS`` so scrapes by several Prometheus
  servers, or of several gunicorn workers, cost one look.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from connexion.middleware import MiddlewarePosition
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.contract import ACTIVE_STATES, QUEUES
from common.logs import event, event_log_target, install_event_log
from common.metrics import (
    HTTP_DURATION,
    HTTP_REQUESTS,
    NAMESPACE,
    TENANTS,
    instance_directory,
    job_finished,
    scrape_registry,
    use_directory,
)
from common.metrics import job_submitted as metrics_job_submitted
from common.settings import Settings

log = logging.getLogger(__name__)
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
DOCS_PATHS = re.compile(r"^/(ui(/.*)?|openapi\.json)?$")


def operation_table(spec: dict[str, Any]) -> list[tuple[re.Pattern[str], dict[str, str]]]:
    """(path pattern, method -> operationId) for every path of ``spec``."""
    table = []
    for template, item in (spec.get("paths") or {}).items():
        ops = {
            m.upper(): op["operationId"]
            for m, op in item.items()
            if m in METHODS and isinstance(op, dict) and "operationId" in op
        }
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        table.append((re.compile(f"^{pattern}/?$"), ops))
    return table


class HttpMetrics:
    """Counts and times every HTTP answer by operation, method and status."""

    def __init__(self, app: ASGIApp, spec: dict[str, Any]) -> None:
        self.app = app
        self.table = operation_table(spec)

    def operation(self, method: str, path: str) -> str:
        for pattern, ops in self.table:
            if pattern.match(path):
                return ops.get(method) or ops.get("GET" if method == "HEAD" else "") or "unmatched"
        return "docs" if DOCS_PATHS.match(path) else "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", "GET")).upper()
        method_label = method if method.lower() in METHODS else "other"
        operation = self.operation(method, str(scope.get("path", "")))
        status = 500  # an exception that escapes is answered 500 further out
        started = time.perf_counter()

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            HTTP_REQUESTS.labels(operation, method_label, str(status)).inc()
            HTTP_DURATION.labels(operation, method_label).observe(time.perf_counter() - started)


@dataclass(frozen=True)
class Snapshot:
    """One look at RabbitMQ and Redis: queue -> (ready, consumers); state -> (jobs, oldest s)."""

    queues: dict[str, tuple[int, int]]
    broker_up: bool
    jobs: dict[str, tuple[int, float]]
    store_up: bool


class LiveCollector(Collector):
    """Queue depths, consumers and active jobs, read when Prometheus scrapes."""

    def __init__(
        self,
        queues: Callable[[], dict[str, tuple[int, int]]],
        jobs: Callable[[], dict[str, tuple[int, float]]],
        cache_seconds: float,
    ) -> None:
        self._read_queues = queues
        self._read_jobs = jobs
        self.cache_seconds = cache_seconds
        self._snapshot: Snapshot | None = None
        self._taken = 0.0
        self._lock = threading.Lock()

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = time.monotonic()
            if self._snapshot is None or now - self._taken >= self.cache_seconds:
                self._snapshot = self._look()
                self._taken = now
            return self._snapshot

    def _look(self) -> Snapshot:
        queues: dict[str, tuple[int, int]] = {}
        jobs: dict[str, tuple[int, float]] = {}
        broker_up = store_up = True
        try:
            queues = self._read_queues()
        except Exception as exc:  # a scrape must still answer: broker_up says what failed
            log.warning("metrics: could not read the queues: %s", exc)
            broker_up = False
        try:
            jobs = self._read_jobs()
        except Exception as exc:
            log.warning("metrics: could not read the job store: %s", exc)
            store_up = False
        return Snapshot(queues, broker_up, jobs, store_up)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return list(self._families(Snapshot({}, True, {}, True)))

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return list(self._families(self.snapshot()))

    def _families(self, snap: Snapshot) -> Iterator[GaugeMetricFamily]:
        def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{NAMESPACE}_{name}", doc, labels=labels)

        messages = gauge("queue_messages", "Messages ready in a queue (RabbitMQ).", ["queue"])
        consumers = gauge("queue_consumers", "Consumers of a queue (RabbitMQ).", ["queue"])
        for queue, (ready, count) in sorted(snap.queues.items()):
            messages.add_metric([queue], ready)
            consumers.add_metric([queue], count)
        broker = gauge("broker_up", "1 when RabbitMQ answered the last look.", [])
        broker.add_metric([], 1 if snap.broker_up else 0)
        active = gauge("jobs_active", "Jobs queued or running (the job store).", ["state"])
        oldest = gauge(
            "jobs_oldest_active_seconds",
            "Seconds since the oldest job in this state was submitted.",
            ["state"],
        )
        for state, (count, age) in sorted(snap.jobs.items()):
            active.add_metric([state], count)
            oldest.add_metric([state], age)
        store = gauge("store_up", "1 when Redis answered the last look.", [])
        store.add_metric([], 1 if snap.store_up else 0)
        yield from (messages, consumers, broker, active, oldest, store)


def rabbitmq_queues(broker_url: str, timeout: float) -> Callable[[], dict[str, tuple[int, int]]]:
    """Reads each queue's ready messages and consumers by a passive ``queue_declare``."""

    def read() -> dict[str, tuple[int, int]]:
        from kombu import Connection

        out: dict[str, tuple[int, int]] = {}
        with Connection(broker_url, connect_timeout=timeout) as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
            for queue in QUEUES:
                channel = connection.channel()  # a 404 closes the channel it happens on
                try:
                    ok = channel.queue_declare(queue=queue, passive=True)
                    out[queue] = (int(ok.message_count), int(ok.consumer_count))
                except connection.channel_errors:
                    pass  # not declared yet (no worker ever started): nothing to report
                finally:
                    with contextlib.suppress(Exception):
                        channel.close()
        return out

    return read


def store_jobs(store: Any) -> Callable[[], dict[str, tuple[int, float]]]:
    """Reads the size of each active state's set and its oldest member's age."""

    def read() -> dict[str, tuple[int, float]]:
        now = time.time()
        out: dict[str, tuple[int, float]] = {}
        for state in ACTIVE_STATES:
            key = store.keys.index(state)
            count = int(store.redis.zcard(key))
            first = store.redis.zrange(key, 0, 0, withscores=True)
            out[state] = (count, max(0.0, now - float(first[0][1])) if first else 0.0)
        return out

    return read


EXTENSION_KEY = "cvjobs.metrics"


class ScrapeEndpoint:
    """What GET /metrics needs: the scrape token and the live collector (one per process)."""

    def __init__(self, token: str, live: LiveCollector) -> None:
        self.token = token
        self.live = live

    def registry(self) -> CollectorRegistry:
        """Every process's samples (multiprocess files) and the live gauges."""
        registry = scrape_registry()
        registry.register(self.live)
        return registry


class ScrapeContext:
    """ASGI middleware that hands the security function this app's :class:`ScrapeEndpoint`."""

    def __init__(self, app: ASGIApp, endpoint: ScrapeEndpoint) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("extensions", {})[EXTENSION_KEY] = self.endpoint
        await self.app(scope, receive, send)


def serve_metrics_of_processes(settings: Settings) -> None:
    """The server's entry point (gunicorn's workers): samples in the instance's files (one
    folder per gunicorn master), job events as JSON lines."""
    base = settings.resolve(settings.metrics_dir)
    use_directory(instance_directory(base, "api", os.getppid()))
    install_event_log(event_log_target(settings), "api")


def install(app: Any, settings: Settings, store: Any, spec: dict[str, Any]) -> None:
    """Count every HTTP answer (outermost middleware) and serve GET /metrics's needs."""
    live = LiveCollector(
        rabbitmq_queues(settings.broker_url, settings.publish_timeout_seconds),
        store_jobs(store),
        settings.metrics_cache_seconds,
    )
    TENANTS.limit = settings.metrics_tenant_limit
    endpoint = ScrapeEndpoint(settings.scrape_token(), live)
    app.app.extensions[EXTENSION_KEY] = endpoint
    app.add_middleware(HttpMetrics, position=MiddlewarePosition.BEFORE_EXCEPTION, spec=spec)
    app.add_middleware(
        ScrapeContext, position=MiddlewarePosition.BEFORE_SECURITY, endpoint=endpoint
    )


def job_submitted(pipeline: Any, tenant: str, job_id: str, media: str, held: bool) -> None:
    """The API recorded a job (``held``: a batch member waiting for its window)."""
    metrics_job_submitted(TENANTS, pipeline.name, tenant, media)
    first = pipeline.steps[0] if pipeline.steps else None
    event(
        "job.submitted",
        job_id=job_id,
        tenant=tenant,
        pipeline=pipeline.name,
        media=media,
        queue=first.queue if first is not None else None,
        held=held or None,
    )


def job_cancelled(record: dict[str, Any]) -> None:
    """A queued or running job was cancelled by its tenant (or an admin)."""
    job_finished(TENANTS, str(record.get("pipeline") or ""), record.get("tenant"), "cancelled")
    event(
        "job.finished",
        job_id=record.get("id"),
        tenant=record.get("tenant"),
        pipeline=record.get("pipeline"),
        outcome="cancelled",
    )
