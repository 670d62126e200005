"""Job callbacks: a POST to the job's ``callback_url`` once it succeeded or failed.

Runs on the ``postprocess`` queue, apart from the job's own steps, so a slow or
dead receiver never holds up a job. Non-2xx answers and connection errors are
retried with exponential back-off (about five minutes in all); the outcome is
recorded on the job (``notification``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from celery_worker.app import app, context
from common.contract import TASK_NOTIFY
from common.jobstore import now_iso

TIMEOUT_SECONDS = 10
MAX_RETRIES = 8


class CallbackRefused(Exception):
    """The receiver answered, but not with a 2xx."""


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
                f"/v1/jobs/{job_id}/artifacts/{a['name']}" for a in record.get("artifacts") or []
            ],
        },
    }


@app.task(
    name=TASK_NOTIFY,
    bind=True,
    autoretry_for=(OSError, CallbackRefused),
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=False,
    max_retries=MAX_RETRIES,
    acks_late=True,
)
def notify_job(self: Any, job_id: str) -> None:
    """POST the job's outcome to its callback URL."""
    record = context.store.get(job_id)
    if record is None or not record.get("callback_url"):
        return
    request = urllib.request.Request(
        record["callback_url"],
        data=json.dumps(callback_body(record)).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "cvjobs-callback/1"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:
        _record(job_id, self, f"attempt {self.request.retries + 1} failed: {error}")
        raise
    if not 200 <= status < 300:
        _record(job_id, self, f"attempt {self.request.retries + 1} answered HTTP {status}")
        raise CallbackRefused(f"HTTP {status}")
    context.store.set_notification(job_id, f"delivered (HTTP {status}) at {now_iso()}")


def _record(job_id: str, task: Any, what: str) -> None:
    last = task.request.retries >= MAX_RETRIES
    context.store.set_notification(job_id, f"{what}{'; giving up' if last else '; will retry'}")
