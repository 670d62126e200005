"""Tenants and keys through the API on the real stack: identity, roles, isolation, the admin
operations and the command line.

Two tenants' members (acme, globex), acme's reader and an admin (tests/support/keys.py).
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from common.settings import Settings
from tests.support.api import run_job, submit
from tests.support.keys import StackKeys, headers

pytestmark = [pytest.mark.broker, pytest.mark.workers]


@pytest.fixture(scope="module")
def acme_job(api_client: Any, assets: Path) -> dict[str, Any]:
    job = run_job(api_client, assets / "zidane.jpg", {"pipeline": "blur-faces"})
    assert job["state"] == "succeeded", job["error"]
    assert job["tenant"] == "acme" and job["priority"] == "normal"
    return job


@pytest.fixture(scope="module")
def acme_batch(api_client: Any, assets: Path) -> dict[str, Any]:
    photo = (assets / "zidane.jpg").read_bytes()
    files = [("files", (f"{i}.jpg", photo, "image/jpeg")) for i in range(2)]
    response = api_client.post("/v1/batches", files=files, data={"pipeline": "blur-faces"})
    assert response.status_code == 202, response.text
    batch: dict[str, Any] = response.json()
    assert batch["tenant"] == "acme" and batch["priority"] == "low"
    deadline = time.monotonic() + 90
    while api_client.get(f"/v1/batches/{batch['id']}").json()["state"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return batch


def test_another_tenants_job_is_not_found_as_if_it_never_existed(
    client_as: Any, acme_job: dict[str, Any], acme_batch: dict[str, Any]
) -> None:
    globex = client_as("globex")
    job_id, batch_id = acme_job["id"], acme_batch["id"]
    never = "0" * 32
    for path in ("/v1/jobs/{}", "/v1/jobs/{}/result", "/v1/jobs/{}/artifacts/blurred.jpg"):
        theirs, missing = globex.get(path.format(job_id)), globex.get(path.format(never))
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["detail"].replace(job_id, never) == missing.json()["detail"]
    assert globex.delete(f"/v1/jobs/{job_id}").status_code == 404
    for path in ("/v1/batches/{}", "/v1/batches/{}/download"):
        assert globex.get(path.format(batch_id)).status_code == 404
    listed = globex.get("/v1/jobs?limit=200").json()
    assert job_id not in {j["id"] for j in listed["items"]}
    assert all(j["tenant"] == "globex" for j in listed["items"])
    # ...and the job is all there for its own tenant.
    acme = client_as("acme")
    assert acme.get(f"/v1/jobs/{job_id}/result").status_code == 200
    assert acme.get(f"/v1/batches/{batch_id}/download").status_code == 200


def test_an_admin_sees_every_tenant_and_filters_by_one(
    client_as: Any, acme_job: dict[str, Any]
) -> None:
    admin = client_as("admin")
    assert admin.get(f"/v1/jobs/{acme_job['id']}").json()["tenant"] == "acme"
    everyone = {j["tenant"] for j in admin.get("/v1/jobs?limit=200").json()["items"]}
    assert "acme" in everyone
    only = admin.get("/v1/jobs?tenant=acme&limit=200").json()
    assert only["items"] and {j["tenant"] for j in only["items"]} == {"acme"}
    assert client_as("globex").get("/v1/jobs?tenant=acme").status_code == 403


def test_a_reader_reads_but_may_not_submit_or_delete(
    client_as: Any, acme_job: dict[str, Any], assets: Path
) -> None:
    reader = client_as("acme_reader")
    assert reader.get(f"/v1/jobs/{acme_job['id']}").status_code == 200
    refused = submit(reader, assets / "zidane.jpg", {"pipeline": "blur-faces"})
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert "member role" in refused.json()["detail"]
    assert reader.delete(f"/v1/jobs/{acme_job['id']}").status_code == 403
    assert reader.get("/v1/keys").status_code == 403  # admins only
    assert client_as("acme").get("/v1/tenants").status_code == 403


def test_missing_unknown_and_revoked_keys_get_401(client_as: Any, keys: StackKeys) -> None:
    anonymous = client_as(None)
    response = anonymous.get("/v1/jobs")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert "Bearer" in response.headers["www-authenticate"]
    wrong = anonymous.get("/v1/jobs", headers=headers("cvk_" + "x" * 43))
    assert wrong.status_code == 401 and "unknown or revoked" in wrong.json()["detail"]
    bearer = anonymous.get("/v1/jobs", headers={"Authorization": f"Bearer {keys.acme}"})
    assert bearer.status_code == 200
    # The public operations need no key.
    assert anonymous.get("/health/live").status_code == 200
    assert anonymous.get("/openapi.json").status_code == 200

    admin = client_as("admin")
    made = admin.post("/v1/keys", json={"tenant": "acme", "name": "short-lived", "role": "member"})
    assert made.status_code == 201, made.text
    secret, key_id = made.json()["secret"], made.json()["key"]["id"]
    assert anonymous.get("/v1/jobs", headers=headers(secret)).status_code == 200
    assert admin.delete(f"/v1/keys/{key_id}").json()["revoked_at"]
    time.sleep(0.6)  # CV_KEY_CACHE_SECONDS in the test stack
    revoked = anonymous.get("/v1/jobs", headers=headers(secret))
    assert revoked.status_code == 401 and "www-authenticate" in revoked.headers


def test_keys_are_stored_as_hashes_and_shown_once(
    client_as: Any, stack_store: Any, keys: StackKeys
) -> None:
    admin = client_as("admin")
    made = admin.post("/v1/keys", json={"tenant": "hooli", "name": "ci", "role": "reader"}).json()
    secret = made["secret"]
    assert secret.startswith("cvk_") and len(secret) >= 40
    assert made["key"]["prefix"] == secret[:12]
    assert made["tenant_signing_secret"].startswith("whsec_")  # a new tenant: shown once
    listed = admin.get("/v1/keys?tenant=hooli").json()["keys"]
    assert [k["prefix"] for k in listed] == [secret[:12]]
    assert secret not in str(listed)
    raw = stack_store.redis.hgetall(stack_store.keys.apikey(made["key"]["id"]))
    assert secret not in raw.values() and raw["sha256"] != secret
    tenant = admin.get("/v1/tenants/hooli").json()
    assert "whsec_" not in str(tenant) and tenant["signing_secrets"][0]["expires"] is None
    used = client_as(None).get("/v1/jobs", headers=headers(secret))
    assert used.status_code == 200
    assert admin.get("/v1/keys?tenant=hooli").json()["keys"][0]["last_used_at"]


def test_tenants_through_the_admin_api(client_as: Any) -> None:
    admin = client_as("admin")
    made = admin.post("/v1/tenants", json={"name": "initech", "limits": {"active_jobs": 3}})
    assert made.status_code == 201, made.text
    assert made.json()["signing_secret"].startswith("whsec_")
    assert made.json()["tenant"]["limits"]["active_jobs"] == 3
    assert admin.post("/v1/tenants", json={"name": "initech"}).status_code == 409
    assert admin.post("/v1/tenants", json={"name": "Not OK"}).status_code == 400
    changed = admin.patch(
        "/v1/tenants/initech", json={"limits": {"bytes": 10, "active_jobs": None}}
    )
    assert changed.json()["overrides"] == {"bytes": 10}
    assert changed.json()["limits"]["active_jobs"] == 1000  # the default again
    rotated = admin.post("/v1/tenants/initech/signing-secret")
    assert rotated.status_code == 201 and rotated.json()["previous_valid_until"] > time.time()
    assert len(admin.get("/v1/tenants/initech").json()["signing_secrets"]) == 2
    assert "initech" in {t["name"] for t in admin.get("/v1/tenants").json()["tenants"]}
    assert admin.get("/v1/tenants/nobody").status_code == 404


def test_the_command_line_makes_lists_and_revokes_keys(
    stack_env: dict[str, str], client_as: Any, tmp_path: Path
) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api.keys", *args],
            cwd=tmp_path,  # any directory: the project is installed
            env={**os.environ, **stack_env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    saved = tmp_path / "key"
    made = cli(
        "create", "--tenant", "umbrella", "--name", "cli", "--role", "member", "--save", str(saved)
    )
    assert made.returncode == 0, made.stderr
    secret = saved.read_text().strip()
    assert f"API key (shown once, only its hash is kept): {secret}" in made.stdout
    assert "callback signing secret (shown once): whsec_" in made.stdout
    assert oct(saved.stat().st_mode & 0o777) == "0o600"
    assert client_as(None).get("/v1/usage", headers=headers(secret)).json()["tenant"] == "umbrella"
    listed = cli("list", "--tenant", "umbrella")
    assert secret[:12] in listed.stdout and secret not in listed.stdout
    key_id = listed.stdout.splitlines()[1].split()[0]
    assert cli("revoke", key_id).returncode == 0
    time.sleep(0.6)
    assert client_as(None).get("/v1/usage", headers=headers(secret)).status_code == 401
    assert cli("create", "--tenant", "BAD", "--name", "x", "--role", "member").returncode == 1


def test_auth_off_is_explicit_and_warned(
    stack_settings: Settings, workers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from api.app import create_app

    with caplog.at_level(logging.WARNING, logger="api.app"):
        client = create_app(replace(stack_settings, auth=False)).test_client(
            base_url="http://localhost"
        )
    assert any("CV_AUTH=false" in r.getMessage() for r in caplog.records)
    usage = client.get("/v1/usage")  # no key
    assert usage.status_code == 200 and usage.json()["tenant"] == "default"


def test_only_admins_submit_with_priority_high(client_as: Any, assets: Path) -> None:
    refused = submit(
        client_as("acme"), assets / "zidane.jpg", {"pipeline": "blur-faces", "priority": "high"}
    )
    assert refused.status_code == 403 and "priority high" in refused.json()["detail"]
    job = run_job(
        client_as("admin"), assets / "zidane.jpg", {"pipeline": "blur-faces", "priority": "high"}
    )
    assert job["priority"] == "high" and job["tenant"] == "ops"


def test_a_zip_batch_keeps_its_tenant(client_as: Any, assets: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("a.jpg", (assets / "zidane.jpg").read_bytes())
    globex = client_as("globex")
    response = globex.post(
        "/v1/batches",
        files={"archive": ("a.zip", buffer.getvalue(), "application/zip")},
        data={"pipeline": "blur-faces", "priority": "normal"},
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["tenant"] == "globex" and batch["priority"] == "normal"
    job_id = batch["items"][0]["job_id"]
    assert globex.get(f"/v1/jobs/{job_id}").json()["priority"] == "normal"
    assert client_as("acme").get(f"/v1/jobs/{job_id}").status_code == 404


def test_storage_is_kept_per_tenant(stack_settings: Settings, acme_job: dict[str, Any]) -> None:
    root = stack_settings.resolve(stack_settings.storage_dir)
    assert (root / "tenants" / "acme" / "jobs" / acme_job["id"] / "artifacts").is_dir()
    assert not (root / "jobs").exists()  # nothing outside the tenants' folders
