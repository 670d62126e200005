"""Handlers of /health: liveness, and readiness (RabbitMQ and Redis answer)."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from kombu.exceptions import OperationalError

from api.services import services

JSON = {"Content-Type": "application/json"}
log = logging.getLogger(__name__)


def live() -> tuple[dict[str, Any], int, dict[str, str]]:
    return {"status": "ok"}, 200, JSON


def ready() -> tuple[dict[str, Any], int, dict[str, str]]:
    svc = services()
    checks = {"redis": _check(svc.store.ping), "rabbitmq": _check(_broker_ping)}
    ok = all(check["ok"] for check in checks.values())
    body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "checks": checks}
    if checks["redis"]["ok"]:
        body["workers"] = svc.store.workers.alive()
    return body, 200 if ok else 503, JSON


def _broker_ping() -> bool:
    svc = services()
    with svc.celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=svc.settings.publish_timeout_seconds)
    return True


def _check(probe: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        probe()
    except (redis.RedisError, OperationalError, OSError) as exc:
        # The exception names hosts and ports: the log gets it, the (anonymous) caller not.
        log.warning("readiness check failed: %s", exc)
        return {"ok": False, "detail": "does not answer", "seconds": time.perf_counter() - started}
    return {"ok": True, "detail": "answers", "seconds": round(time.perf_counter() - started, 4)}
