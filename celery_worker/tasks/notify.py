"""Job callbacks: a POST to the job's ``callback_url`` once it succeeded or failed.

Runs on its own ``notify`` queue, so a slow or dead receiver never holds up a
job's steps. The POST goes through ``common.callbacks.callback_client``: the
host is resolved once, every address checked, and the connection made to a
checked address (no DNS rebinding); no proxy, no redirect followed, at most 64 KB
of the answer read. Every callback is signed the Standard Webhooks way:
``webhook-id`` (the same on every retry, so receivers can drop duplicates),
``webhook-timestamp`` and ``webhook-signature``, an HMAC-SHA256 of
``id.timestamp.body`` with each valid signing secret of the job's tenant (two
during a rotation's grace period).

Every failure (address refused, no connection, timeout, a non-2xx or 3xx answer)
is retried with exponential back-off (about five minutes in all) and recorded on
the job (``notification``) as the same "not delivered (attempt N)": which of them
it was goes to the worker log only, so the field is no probe of the internal
network.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, NoReturn

import httpx
from celery.exceptions import SoftTimeLimitExceeded
from standardwebhooks import Webhook

from celery_worker.task import StepTask, worker_task
from common.callbacks.policy import CallbackPolicy, CallbackRefused
from common.callbacks.transport import callback_client, post_callback
from common.clock import now_iso
from common.contract import TASK_NOTIFY, artifact_href

MAX_RETRIES = 8

log = logging.getLogger(__name__)


class CallbackFailed(Exception):
    """This attempt did not get a 2xx answer; retried."""


def callback_body(record: dict[str, Any]) -> dict[str, Any]:
    job_id = record["id"]
    return {
        "id": job_id,
        "state": record["state"],
        "pipeline": record["pipeline"],
        "finished_at": record.get("finished_at"),
        "error": record.get("error"),
        "links": {
            "self": f"/v1/jobs/{job_id}",
            "result": f"/v1/jobs/{job_id}/result" if record["state"] == "succeeded" else None,
            "artifacts": [
                {"name": a["name"], "href": artifact_href(job_id, a["name"])}
                for a in record.get("artifacts") or []
            ],
        },
    }


@worker_task(
    TASK_NOTIFY,
    autoretry_for=(CallbackFailed,),
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=False,
    max_retries=MAX_RETRIES,
    soft_time_limit=30,
)
def notify_job(self: StepTask, job_id: str) -> None:
    """POST the job's outcome to its callback URL."""
    ctx = self.ctx
    jobs = ctx.store.jobs
    record = jobs.get(job_id)
    if record is None or not record.get("callback_url"):
        return
    url = record["callback_url"]
    attempt = self.request.retries + 1
    body = json.dumps(callback_body(record))
    tenant, _ = ctx.store.tenants.ensure(record["tenant"])
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "cvjobs-callback/1",
        **signature_headers(f"msg_{job_id}", body, tenant.valid_secrets()),
    }
    try:
        with callback_client(CallbackPolicy.from_settings(ctx.settings)) as client:
            status = post_callback(client, url, body.encode(), headers)
    # The soft time limit is the last guard against a receiver that trickles its answer.
    except (CallbackRefused, httpx.HTTPError, SoftTimeLimitExceeded) as exc:
        _failed(self, job_id, attempt, f"{type(exc).__name__}: {exc}")
    if not 200 <= status < 300:
        _failed(self, job_id, attempt, f"the receiver answered HTTP {status}")
    jobs.set_notification(job_id, f"delivered (HTTP {status}) at {now_iso()}")


def signature_headers(message_id: str, body: str, secrets: list[str]) -> dict[str, str]:
    """Standard Webhooks headers for ``body``, signed with every one of ``secrets``."""
    now = datetime.now(UTC)
    signatures = " ".join(Webhook(s).sign(message_id, now, body) for s in secrets)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signatures,
    }


def _failed(task: StepTask, job_id: str, attempt: int, why: str) -> NoReturn:
    last = task.request.retries >= MAX_RETRIES
    log.warning("callback of job %s not delivered (attempt %d): %s", job_id, attempt, why)
    outcome = f"not delivered (attempt {attempt}); {'gave up' if last else 'will retry'}"
    task.ctx.store.jobs.set_notification(job_id, outcome)
    raise CallbackFailed(outcome)
