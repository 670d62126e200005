"""Job callbacks: a POST to the job's ``callback_url`` once it succeeded or failed.

Runs on its own ``notify`` queue, so a slow or dead receiver never holds up a
job's steps. The address is checked again before each attempt
(``common.callbacks``); redirects are not followed. Every callback is signed the
Standard Webhooks way: ``webhook-id`` (the same on every retry, so receivers can
drop duplicates), ``webhook-timestamp`` and ``webhook-signature``, an HMAC-SHA256 of
``id.timestamp.body`` with each valid signing secret of the job's tenant (two
during a rotation's grace period). Connection errors and
non-2xx answers are retried with exponential back-off (about five minutes in
all); the outcome is recorded on the job (``notification``) in general terms,
so the field does not become a probe of the internal network.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook

from celery_worker.task import StepTask, worker_task
from common.callbacks import CallbackRefused, check_callback_url
from common.clock import now_iso
from common.contract import TASK_NOTIFY, artifact_href

TIMEOUT_SECONDS = 5
MAX_RETRIES = 8


class CallbackFailed(Exception):
    """This attempt did not get a 2xx answer; retried."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx answer is then reported as a failure


_OPENER = urllib.request.build_opener(_NoRedirects)


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
    try:
        check_callback_url(url, ctx.settings.callback_hosts, ctx.settings.callback_allow_loopback)
    except CallbackRefused as exc:
        jobs.set_notification(job_id, f"not sent: {exc}")
        return
    body = json.dumps(callback_body(record))
    tenant, _ = ctx.store.tenants.ensure(record["tenant"])
    request = urllib.request.Request(
        url,
        data=body.encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "cvjobs-callback/1",
            **signature_headers(f"msg_{job_id}", body, tenant.valid_secrets()),
        },
    )
    try:
        with _OPENER.open(request, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (OSError, http.client.HTTPException, ValueError):
        _failed(self, job_id, f"attempt {attempt}: no answer from the receiver")
    if not 200 <= status < 300:
        _failed(self, job_id, f"attempt {attempt}: the receiver answered HTTP {status}")
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


def _failed(task: StepTask, job_id: str, what: str) -> None:
    last = task.request.retries >= MAX_RETRIES
    task.ctx.store.jobs.set_notification(job_id, f"{what}; {'gave up' if last else 'will retry'}")
    raise CallbackFailed(what)
