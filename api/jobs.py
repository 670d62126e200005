"""Job service: reading, listing, cancelling and deleting jobs, apart from HTTP.

Every function takes the caller: another tenant's job answers 404 exactly as one that
never existed (an admin sees every tenant's). Reads never change a job: a stuck one
is failed by upkeep (``celery_worker.upkeep``). Submitting is ``api.submissions``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kombu.exceptions import OperationalError

from api import metrics
from api.auth import Caller
from api.errors import Conflict, Forbidden, NotFound
from api.services import Services
from api.views import job_view
from common.batching import after_end
from common.contract import ACTIVE_STATES
from common.storage import StorageKeyError

log = logging.getLogger(__name__)


def get(svc: Services, caller: Caller, job_id: str) -> dict[str, Any]:
    """The job's record, if the caller may see it; reading never changes it."""
    record = svc.store.jobs.get(job_id)
    if record is None or not (caller.is_admin or record["tenant"] == caller.tenant):
        raise NotFound(f"no job {job_id} (never submitted, deleted, or expired)")
    return record


def page(
    svc: Services,
    caller: Caller,
    state: str | None,
    limit: int,
    offset: int,
    tenant: str | None = None,
) -> dict[str, Any]:
    """One page of the caller's tenant's jobs (an admin's: every tenant's, or ``tenant``'s),
    newest first, with the total and a link to the next page."""
    if tenant is not None and tenant != caller.tenant and not caller.is_admin:
        raise Forbidden("only admins list other tenants' jobs")
    scope = tenant if tenant is not None else (None if caller.is_admin else caller.tenant)
    records, total = svc.store.jobs.page(state, limit, offset, tenant=scope)
    next_offset = offset + limit
    query = f"limit={limit}&offset={next_offset}"
    query += (f"&state={state}" if state else "") + (f"&tenant={tenant}" if tenant else "")
    return {
        "items": [job_view(r) for r in records],
        "total": total,
        "limit": limit,
        "offset": offset,
        "next": f"/v1/jobs?{query}" if next_offset < total else None,
    }


def result(svc: Services, caller: Caller, job_id: str) -> dict[str, Any]:
    record = get(svc, caller, job_id)
    if record["state"] != "succeeded":
        raise Conflict(f"job {job_id} is {record['state']}; a result exists once it succeeded")
    document = svc.store.jobs.result(job_id)
    if document is None:
        raise NotFound(f"the result of job {job_id} has expired")
    return document


def artifact_path(svc: Services, caller: Caller, job_id: str, name: str) -> tuple[Path, str]:
    record = get(svc, caller, job_id)
    for artifact in record.get("artifacts") or []:
        if artifact["name"] == name:
            try:
                path = svc.storage.artifact_path(record["tenant"], job_id, name)
            except StorageKeyError:
                break
            if path.is_file():
                return path, artifact["content_type"]
            break
    raise NotFound(f"job {job_id} has no artifact {name!r}")


def delete(svc: Services, caller: Caller, job_id: str) -> None:
    """Cancel an active job (record kept, marked cancelled) or delete a finished one."""
    record = get(svc, caller, job_id)
    tenant = record["tenant"]
    if record["state"] in ACTIVE_STATES and svc.store.jobs.cancel(job_id):
        _revoke(svc, record.get("task_ids") or [])
        svc.store.jobs.release_bytes(tenant, job_id)
        metrics.job_cancelled(record)
        after_end(svc.store, svc.celery, svc.catalogue.pipelines, record)  # its batch goes on
    else:
        svc.store.jobs.delete(job_id, tenant)
    svc.storage.remove_job(tenant, job_id)


def _revoke(svc: Services, task_ids: list[str]) -> None:
    # Workers also check the job's state before each step, so a revoke that does not
    # reach a worker (e.g. one started later) only costs that step's start-up.
    try:
        svc.celery.control.revoke(task_ids)
    except OperationalError as exc:
        log.warning("revoke of %s not sent: %s", task_ids, exc)
