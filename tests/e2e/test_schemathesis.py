"""Schemathesis against the real server: every operation, all checks and phases, nothing found.

Two runs, each through a real gunicorn in front of the real RabbitMQ and Redis:

- the tenant operations (jobs, batches, pipelines, models, usage, health) on ``http_api``,
  whose workers run what gets accepted, with a member key of a tenant made for the run
  (it sees no other test's jobs). A few real jobs and a batch are made first and offered
  to the fuzzer as path ids, so finished jobs' results, artifacts and a zip are fetched
  and checked against the spec, not only 404s. The tenant's jobs are removed afterwards.
- the admin operations (tenants, keys) with an admin key, on a second server with a Redis
  prefix of its own: they create tenants, change limits, rotate signing secrets and
  revoke keys (their own included), none of which may reach the other tests' keys.

Schemathesis runs from its own venv, ``.venv-fuzz`` (``scripts/install_fuzz.sh``, run
first: idempotent), with the hooks of ``schemathesis_hooks.py``. Each run prints its case
count, seed (``--seed`` replays it) and time; the JUnit report lies in the test's
temporary directory. What is not checked, and why, is said where the command is built.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from common.jobstore import JobStore
from common.settings import REPO_ROOT, Settings
from tests.support import stack
from tests.support.jobs import wait_for_job, wait_until
from tests.support.keys import headers

pytestmark = [pytest.mark.broker, pytest.mark.workers, pytest.mark.http]

INSTALLER = REPO_ROOT / "scripts" / "install_fuzz.sh"
SCHEMATHESIS = REPO_ROOT / ".venv-fuzz" / "bin" / "schemathesis"
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
NO_ENV_FILE = Path("/nonexistent/.env")
# Cases per operation and phase, and the floor of cases a run must reach (runs here gave
# 2,600-2,800 and 2,500-2,700, in about 30 s each): a run that silently tests less fails.
MAX_EXAMPLES = {"tenant": 200, "admin": 300}
MIN_CASES = {"tenant": 2000, "admin": 1500}
# A run takes under a minute here; past this something hangs (pytest's own limit is 300 s).
RUN_TIMEOUT = 200
# Active jobs the fuzzed tenant may have: bounds the work it leaves the workers (429 beyond).
FUZZ_ACTIVE_JOBS = 6
CASES = re.compile(r"^\s*(\d+) generated", re.MULTILINE)
SEED = re.compile(r"^Seed: (\d+)", re.MULTILINE)
# Schemathesis 4.32.5 itself sometimes crashes drawing an invalid multipart body around a
# file part (jsonschema-rs is handed the file: "Unsupported type: 'Binary'"), which ends
# that phase's run of the operation (about one tenant run in four). A run whose only problem
# is that crash is run again with a new seed, three times at most; one with a failure never.
TOOL_CRASH = "Unsupported type: 'Binary'"
TOOL_CRASH_RUNS = 4
CRASHES = re.compile(r"^Runtime Error\n\n(.+)$", re.MULTILINE)
SUMMARY_ERRORS = re.compile(r"^Errors:\n((?:[ \t]+\S.*\n)+)", re.MULTILINE)

# Statuses a schema-valid upload may still get: JSON Schema cannot say that the file must
# be an image or video (415) within its kind's size and pixel limits (413, 422), nor which
# options belong to which pipeline, nor which callback hosts the configuration allows (400);
# nor, for a segment request, whether its points lie inside the image (400).
# The operations' descriptions say so; every other operation keeps the default expectation.
UPLOAD_ACCEPTS = ["2xx", "400", "401", "403", "404", "409", "413", "415", "422", "429", "5xx"]

COMMON_CONFIG = f"""
[phases.stateful]
# Links from Location headers and the spec's own links only: the dependency analysis also
# links a batch member's job_id, which is null for a rejected member, and then sends
# /v1/jobs/None, reported as a schema-valid request refused.
inference.algorithms = ["location-headers"]

[[operations]]
include-operation-id = ["create_job", "create_batch", "upload_image", "segment_image"]
checks.positive_data_acceptance.expected-statuses = {json.dumps(UPLOAD_ACCEPTS)}

# A plain GET of the WebSocket endpoint answers 426 (Upgrade Required), valid or not.
[[operations]]
include-operation-id = ["open_websocket"]
checks.positive_data_acceptance.expected-statuses = ["426"]
"""


@pytest.fixture(scope="module")
def schemathesis() -> None:
    """Schemathesis in .venv-fuzz, installed when missing or out of date."""
    subprocess.run([str(INSTALLER)], check=True, timeout=600)


def run_schemathesis(
    label: str, base: str, key: str, config: str, selection: list[str], work: Path
) -> dict[str, Any]:
    """A run against ``base`` as ``key`` (again if only Schemathesis crashed, see TOOL_CRASH);
    its exit status, case count, seed and output. Reports and config go to ``work``."""
    for attempt in range(1, TOOL_CRASH_RUNS + 1):
        run = _run(label, base, key, config, selection, work / f"run-{attempt}")
        if not only_tool_crashes(run):
            break
        print(f"\nschemathesis crashed itself ({TOOL_CRASH}), seed {run['seed']}")
    return run


def only_tool_crashes(run: dict[str, Any]) -> bool:
    output = run["output"]
    summary = output[output.rfind(" SUMMARY ") :]
    errors = SUMMARY_ERRORS.search(summary)
    crashes = CRASHES.findall(output)
    return (
        run["status"] != 0
        and "\nFailures:\n" not in summary
        and errors is not None
        and all("Runtime Error" in line for line in errors.group(1).splitlines())
        and bool(crashes)
        and all(message == TOOL_CRASH for message in crashes)
    )


def _run(
    label: str, base: str, key: str, config: str, selection: list[str], work: Path
) -> dict[str, Any]:
    work.mkdir(parents=True)
    config_file = work / "schemathesis.toml"
    config_file.write_text(COMMON_CONFIG + config)
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config_file),
        "run",
        f"{base}/openapi.json",
        "--url",
        base,
        "-H",
        f"Authorization: Bearer {key}",
        # The key is given: generating values for the spec's other scheme (X-API-Key) would
        # send a random key beside the valid one, which the API rightly accepts (OpenAPI
        # security alternatives: one suffices). ignored_auth still sends requests without
        # a key and with a wrong one for each scheme, and wants 401.
        "--generation-with-security-parameters",
        "false",
        "--checks",
        "all",
        # use_after_free wants a 404 from GET /v1/jobs/{id} after any successful DELETE of
        # it; DELETE of a queued or running job cancels it and keeps its record (state
        # cancelled) until it expires, as the spec describes. It is the API's only DELETE
        # with a GET (keys have none), so nothing else loses the check.
        "--exclude-checks",
        "use_after_free",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES[label]),
        # One worker: Schemathesis' worker threads trip CPython 3.11's spurious "AST
        # constructor recursion depth mismatch" (gh-106905); the server is the bottleneck.
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--report",
        "junit",
        "--report-dir",
        str(work),
        "--no-color",
        *selection,
    ]
    started = time.monotonic()
    done = subprocess.run(
        command,
        cwd=work,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    cases = CASES.search(output)
    seed = SEED.search(output)
    return {
        "status": done.returncode,
        "cases": int(cases.group(1)) if cases else 0,
        "seed": seed.group(1) if seed else "?",
        "seconds": time.monotonic() - started,
        "output": output,
    }


def check(label: str, run: dict[str, Any]) -> None:
    print(
        f"\nschemathesis {label} operations: {run['cases']} cases in {run['seconds']:.0f} s, "
        f"exit {run['status']}, seed {run['seed']}"
    )
    assert run["status"] == 0, run["output"][-12000:]
    assert run["cases"] >= MIN_CASES[label], run["output"][-3000:]


def dictionary(name: str, values: list[str]) -> str:
    return f"\n[dictionaries.{name}]\nvalues = {json.dumps(values)}\n"


def bind(operations: list[str], parameters: dict[str, str]) -> str:
    """Path parameters of ``operations`` drawn half the time from the named dictionaries."""
    bound = ", ".join(
        f'"path.{parameter}" = {{ dictionary = "{name}", probability = 0.5 }}'
        for parameter, name in parameters.items()
    )
    return (
        f"\n[[operations]]\ninclude-operation-id = {json.dumps(operations)}\n"
        f"parameters = {{ {bound} }}\n"
    )


# --- tenant operations -----------------------------------------------------------------


@pytest.fixture
def fuzz_tenant(stack_store: Any, http_api: str) -> Iterator[tuple[str, str]]:
    """(tenant, member key) made for this run; its jobs are removed afterwards."""
    tenant = f"fuzz-{uuid.uuid4().hex[:8]}"
    stack_store.tenants.create(tenant, {"active_jobs": FUZZ_ACTIVE_JOBS})
    _, key = stack_store.apikeys.create(tenant, "schemathesis", "member")
    yield tenant, key
    with requests.Session() as session:
        session.headers.update(headers(key))
        for _ in range(3):  # cancelled jobs are deleted in the next round
            page = session.get(f"{http_api}/v1/jobs", params={"limit": 200}, timeout=30).json()
            if not page["items"]:
                break
            for job in page["items"]:
                session.delete(f"{http_api}/v1/jobs/{job['id']}", timeout=30)


def seed_jobs(base: str, key: str, assets: Path) -> dict[str, list[str]]:
    """Finished jobs (two pipelines) and a completed batch of the fuzzed tenant."""
    photos = {name: (assets / name).read_bytes() for name in ("bus.jpg", "zidane.jpg")}
    with requests.Session() as session:
        session.headers.update(headers(key))
        jobs = []
        for pipeline in ("detect", "detect-crops"):
            made = session.post(
                f"{base}/v1/jobs",
                files={"file": ("bus.jpg", photos["bus.jpg"], "image/jpeg")},
                data={"pipeline": pipeline},
                timeout=30,
            )
            assert made.status_code == 202, made.text
            jobs.append(made.json()["id"])
        batch = session.post(
            f"{base}/v1/batches",
            files=[("files", (name, data, "image/jpeg")) for name, data in photos.items()],
            data={"pipeline": "detect"},
            timeout=30,
        )
        assert batch.status_code == 202, batch.text
        batch_id = batch.json()["id"]
        finished = [
            wait_for_job(lambda j: session.get(f"{base}/v1/jobs/{j}", timeout=10).json(), j, 90)
            for j in jobs
        ]
        assert all(job["state"] == "succeeded" for job in finished), finished
        wait_until(
            lambda: (
                session.get(f"{base}/v1/batches/{batch_id}", timeout=10).json()["state"]
                == "completed"
            ),
            90,
            "the seeded batch to complete",
        )
    artifacts = sorted({a["name"] for job in finished for a in job["links"]["artifacts"]})
    return {"jobs": jobs, "artifacts": artifacts, "batches": [batch_id]}


@pytest.mark.usefixtures("schemathesis")
def test_tenant_operations_fuzzed_find_nothing(
    http_api: str,
    fuzz_tenant: tuple[str, str],
    assets: Path,
    tmp_path: Path,
) -> None:
    _, key = fuzz_tenant
    seeded = seed_jobs(http_api, key, assets)
    config = (
        dictionary("jobs", seeded["jobs"])
        + dictionary("artifacts", seeded["artifacts"])
        + dictionary("batches", seeded["batches"])
        + bind(["get_job", "get_result"], {"job_id": "jobs"})
        + bind(["get_artifact"], {"job_id": "jobs", "name": "artifacts"})
        + bind(["get_batch", "download_batch"], {"batch_id": "batches"})
    )
    # GET /v1/events (tag events) is an endless stream, which a fuzzer can only time out on:
    # tests/unit/api/test_events.py and tests/e2e/test_events.py cover its answers. GET
    # /metrics (tag metrics) wants the scrape token, which no API key is: a fuzzer gets only
    # 401s (tests/unit/api/test_metrics.py covers them).
    selection = ["--exclude-tag", "admin", "--exclude-tag", "events", "--exclude-tag", "metrics"]
    run = run_schemathesis("tenant", http_api, key, config, selection, tmp_path)
    check("tenant", run)


# --- admin operations ------------------------------------------------------------------


@pytest.fixture
def admin_server(stack_env: dict[str, str], stack_dir: Path) -> Iterator[tuple[str, str]]:
    """(base URL, admin key) of a server whose tenants and keys are its own (a Redis prefix
    apart), removed afterwards."""
    prefix = f"cvfuzz-{uuid.uuid4().hex[:8]}"
    env = {
        **stack_env,
        "CV_REDIS_PREFIX": prefix,
        "CV_STORAGE_DIR": str(stack_dir / f"{prefix}-storage"),
    }
    settings = Settings.from_env(env, env_file=NO_ENV_FILE)
    store = JobStore.from_url(settings.redis_url, prefix, settings.job_ttl_seconds)
    store.tenants.ensure("ops")
    _, key = store.apikeys.create("ops", "schemathesis", "admin")
    logs = stack_dir / f"logs-{prefix}"
    logs.mkdir(exist_ok=True)
    try:
        with stack.gunicorn(env, logs) as base:
            yield base, key
    finally:
        client = redis.Redis.from_url(settings.redis_url)
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)


@pytest.mark.usefixtures("schemathesis")
def test_admin_operations_fuzzed_find_nothing(
    admin_server: tuple[str, str], tmp_path: Path
) -> None:
    base, key = admin_server
    selection = ["--include-tag", "admin", "--include-tag", "usage"]
    run = run_schemathesis("admin", base, key, "", selection, tmp_path)
    check("admin", run)
