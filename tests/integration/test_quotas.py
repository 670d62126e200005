"""Per-tenant limits on the real stack: each answers 429 with Retry-After and leaves nothing.

Each test makes a tenant of its own (through the admin API), so limits never touch the
other tests' tenants.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from api.quotas import Quotas
from common.jobstore import JobStore
from common.settings import Settings
from tests.support.api import submit
from tests.support.jobs import wait_for_job
from tests.support.keys import headers

pytestmark = [pytest.mark.broker, pytest.mark.workers]


def tenant_client(client_as: Any, limits: dict[str, int]) -> tuple[Any, str]:
    """A member client of a new tenant with these limits."""
    admin = client_as("admin")
    name = f"q-{uuid.uuid4().hex[:8]}"
    assert admin.post("/v1/tenants", json={"name": name, "limits": limits}).status_code == 201
    made = admin.post("/v1/keys", json={"tenant": name, "name": "quota", "role": "member"})
    client = client_as(None)
    client.headers.update(headers(made.json()["secret"]))
    return client, name


def assert_nothing_left(store: JobStore, settings: Settings, tenant: str, jobs_before: int) -> None:
    """No record, no list entry, no upload of a refused submission."""
    assert store.redis.zcard(store.keys.tenant_index(tenant)) == jobs_before
    folder = settings.resolve(settings.storage_dir) / "tenants" / tenant / "jobs"
    uploads = list(folder.glob("*/input.*")) if folder.exists() else []
    assert len(uploads) == jobs_before


def too_many(response: Any, limit: str) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1
    body: dict[str, Any] = response.json()
    assert body["limit"] == limit and body["status"] == 429
    return body


def test_active_jobs(
    client_as: Any, assets: Path, stack_store: JobStore, stack_settings: Settings
) -> None:
    client, tenant = tenant_client(client_as, {"active_jobs": 1})
    slow = {"pipeline": "detect", "image_size": "2048"}
    big = (assets / "bus.jpg").read_bytes()
    first = submit(client, big, slow)
    assert first.status_code == 202
    body = too_many(submit(client, big, slow), "active_jobs")
    assert body["limit_value"] == 1 and body["usage"] == 1
    assert_nothing_left(stack_store, stack_settings, tenant, 1)
    # A batch that would pass the limit is refused whole, before any member is stored.
    files = [("files", (f"{i}.jpg", big, "image/jpeg")) for i in range(3)]
    too_many(client.post("/v1/batches", files=files, data={"pipeline": "detect"}), "active_jobs")
    assert_nothing_left(stack_store, stack_settings, tenant, 1)
    job = wait_for_job(lambda j: client.get(f"/v1/jobs/{j}").json(), first.json()["id"], 120)
    assert job["state"] == "succeeded", job["error"]
    assert submit(client, big, slow).status_code == 202  # a slot is free again


def test_submissions_per_minute(client_as: Any, assets: Path) -> None:
    client, tenant = tenant_client(client_as, {"submissions_per_minute": 2})
    photo = (assets / "zidane.jpg").read_bytes()
    for _ in range(2):
        assert submit(client, photo, {"pipeline": "blur-faces"}).status_code == 202
    body = too_many(submit(client, photo, {"pipeline": "blur-faces"}), "submissions_per_minute")
    assert body["limit_value"] == 2
    usage = client.get("/v1/usage").json()
    assert usage["tenant"] == tenant and usage["usage"]["submissions_per_minute"] == 2
    assert usage["limits"]["submissions_per_minute"] == 2


def test_bytes_stored(
    client_as: Any, assets: Path, stack_store: JobStore, stack_settings: Settings
) -> None:
    photo = (assets / "zidane.jpg").read_bytes()
    client, tenant = tenant_client(client_as, {"bytes": len(photo) + 1000})
    job = submit(client, photo, {"pipeline": "blur-faces"}).json()
    done = wait_for_job(lambda j: client.get(f"/v1/jobs/{j}").json(), job["id"], 60)
    artifacts = sum(a["bytes"] for a in done["links"]["artifacts"])
    usage = client.get("/v1/usage").json()["usage"]
    assert usage["bytes"] == len(photo) + artifacts  # the upload and what the job made
    body = too_many(submit(client, photo, {"pipeline": "blur-faces"}), "bytes")
    assert body["usage"] == usage["bytes"]
    assert_nothing_left(stack_store, stack_settings, tenant, 1)
    # Deleting the job gives its bytes back.
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert client.get("/v1/usage").json()["usage"]["bytes"] == 0
    assert submit(client, photo, {"pipeline": "blur-faces"}).status_code == 202


def test_usage_of_another_tenant_is_for_admins(client_as: Any) -> None:
    assert client_as("acme").get("/v1/usage?tenant=globex").status_code == 403
    usage = client_as("admin").get("/v1/usage?tenant=globex").json()
    assert usage["tenant"] == "globex" and set(usage["limits"]) == set(usage["usage"])
    assert client_as("admin").get("/v1/usage?tenant=nobody").status_code == 404


def test_two_submissions_never_take_the_last_slot_together(
    stack_settings: Settings, stack_store: JobStore
) -> None:
    """The record is refused by the same script that counts: no check-then-act gap."""
    from common.jobstore.records import OverLimit

    tenant = f"race-{uuid.uuid4().hex[:6]}"
    stack_store.tenants.create(tenant, {"active_jobs": 1})
    quotas = Quotas(stack_settings, stack_store)
    assert quotas.limits(tenant).active_jobs == 1
    created = []
    for _ in range(5):
        with contextlib.suppress(OverLimit):
            job_id = uuid.uuid4().hex
            stack_store.jobs.create(job_id, "detect", [], {}, {}, [], tenant=tenant, active_limit=1)
            created.append(job_id)
    assert len(created) == 1 and stack_store.jobs.active(tenant) == 1
    stack_store.jobs.delete(created[0], tenant)  # never published: not upkeep's to find
