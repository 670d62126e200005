"""Removes the files (and index entries) of jobs older than the TTL.

Redis expires the records by itself; the files on disk and the sorted-set
entries need this. Postprocess workers run it at most every ten minutes
(``JobStore.claim_janitor_run``); ``python -m celery_worker.janitor`` runs it now.
"""

from __future__ import annotations

import time

from common.jobstore import JobStore
from common.storage import Storage

# A job directory without any record is an upload whose submission failed half way
# (e.g. the API process died); it is removed once it is this old.
ORPHAN_AGE_SECONDS = 3600
# Upload scratch files (storage tmp/) of an API process killed mid-request.
SCRATCH_AGE_SECONDS = 86400


def purge_expired(store: JobStore, storage: Storage, now: float | None = None) -> int:
    """Delete jobs submitted more than the TTL ago; returns how many went."""
    now = time.time() if now is None else now
    expired = store.expired_ids(now)
    for job_id in expired:
        storage.remove_job(job_id)
        store.delete(job_id)
    for job_id in storage.job_ids():
        try:
            age = now - storage.job_dir(job_id).stat().st_mtime
        except FileNotFoundError:  # deleted meanwhile (API DELETE, a cancelled step)
            continue
        if age > ORPHAN_AGE_SECONDS and store.state(job_id) is None:
            storage.remove_job(job_id)
    _purge_scratch(storage, now)
    return len(expired)


def _purge_scratch(storage: Storage, now: float) -> None:
    if not storage.tmp_dir.is_dir():
        return
    for path in storage.tmp_dir.iterdir():
        try:
            if path.is_file() and now - path.stat().st_mtime > SCRATCH_AGE_SECONDS:
                path.unlink()
        except FileNotFoundError:  # finished meanwhile
            continue


if __name__ == "__main__":
    from celery_worker.app import context

    print(f"removed {purge_expired(context.store, context.storage)} expired jobs")
