"""The one Celery configuration both sides use: queues, routes and delivery guarantees.

The API builds a Celery app from it only to publish; the workers add their tasks.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from common.contract import PRIORITIES, QUEUES, TASK_ROUTES
from common.settings import Settings

# Seconds between a step's soft time limit (the job fails with kind "timeout") and the
# hard one (its process is killed).
HARD_LIMIT_GRACE_SECONDS = 30


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings; each line is a delivery guarantee the service relies on."""
    return {
        "broker_url": settings.broker_url,
        # Publisher confirms: a message RabbitMQ refuses raises at publish time
        # instead of being dropped silently.
        "broker_transport_options": {"confirm_publish": True},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.publish_timeout_seconds,
        # Durable queues, one direct exchange each; messages persistent. Priority queues:
        # RabbitMQ hands out a job's messages by their priority (batch members low), so one
        # tenant's big batch never makes another's single job wait behind it. Queues made
        # without it must be migrated (python -m common.migrate queues).
        "task_queues": [queue(name) for name in QUEUES],
        "task_default_priority": PRIORITIES["normal"],
        "task_routes": TASK_ROUTES,
        "task_create_missing_queues": False,
        "task_default_delivery_mode": "persistent",
        # A step is acknowledged only when it finished; a worker killed mid-step
        # gives the message back to RabbitMQ and another worker redoes it.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message at a time per process: inference steps are long, and a
        # prefetched message would wait behind them instead of going to an idle worker.
        "worker_prefetch_multiplier": 1,
        # A pool process loads its models before it says it is up (worker_process_init).
        "worker_proc_alive_timeout": settings.worker_process_start_seconds,
        # Job state lives in our own Redis records; Celery keeps no results.
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.25,
            "interval_max": 0.5,
        },
        "task_soft_time_limit": settings.step_time_limit_seconds,
        "task_time_limit": settings.step_time_limit_seconds + HARD_LIMIT_GRACE_SECONDS,
        # Flower sees every task from "received" on. No "task-sent" events: each would be a
        # second publish (and confirm) after every message's own, at the API and at every
        # hop; the service's own job events and metrics say when a job was queued.
        "worker_send_task_events": True,
        "task_send_sent_event": False,
    }


MAX_PRIORITY = max(PRIORITIES.values())


def queue(name: str) -> Queue:
    """A queue of the service as every process declares it."""
    exchange = Exchange(name, type="direct", durable=True)
    return Queue(
        name,
        exchange,
        routing_key=name,
        durable=True,
        queue_arguments={"x-max-priority": MAX_PRIORITY},
    )


def make_celery(settings: Settings, name: str = "cvjobs") -> Celery:
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app
