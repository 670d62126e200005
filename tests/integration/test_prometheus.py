"""A real Prometheus scrapes the test stack's API and workers while jobs run.

Prometheus (Debian's package; ``make test`` installs it with the servers) runs as a plain
process on 127.0.0.1 with a generated config: the gunicorn API's ``/metrics`` with the
scrape token, and each worker service's exporter. After a few jobs its HTTP API must
report the job counters, a step histogram and the queues' consumers with real values;
the job events of one job must be in the JSON event log from the API and every worker.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from common.contract import QUEUES
from tests.support import stack
from tests.support.jobs import wait_until
from tests.support.keys import StackKeys, headers

pytestmark = [pytest.mark.broker, pytest.mark.workers, pytest.mark.http]
JOBS = 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus(http_api: str, stack_env: dict[str, str], stack_dir: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: `make test` installs it (scripts/services.sh)")
    folder = stack_dir / "prometheus"
    folder.mkdir(exist_ok=True)
    (folder / "token").write_text(stack_env["CV_METRICS_TOKEN"] + "\n")
    base = int(stack_env["CV_WORKER_METRICS_PORT"])
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": "cvjobs-api",
                "authorization": {"type": "Bearer", "credentials_file": str(folder / "token")},
                "static_configs": [{"targets": [urlsplit(http_api).netloc]}],
            },
            {
                "job_name": "cvjobs-workers",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{base + i}"], "labels": {"service": q}}
                    for i, q in enumerate(QUEUES)
                ],
            },
        ],
    }
    (folder / "prometheus.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with (folder / "prometheus.log").open("ab") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError((folder / "prometheus.log").read_text()[-2000:])
            try:
                return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, 60, "Prometheus to be ready")
        yield url
    finally:
        stack.stop(process)


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    answer.raise_for_status()
    body = answer.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(prometheus: str, expr: str) -> float:
    result = query(prometheus, expr)
    return float(result[0]["value"][1]) if result else float("nan")


def test_prometheus_scrapes_the_api_and_workers_while_jobs_run(
    prometheus: str,
    http_api: str,
    keys: StackKeys,
    assets: Path,
    stack_env: dict[str, str],
) -> None:
    photo = (assets / "zidane.jpg").read_bytes()
    ids = []
    with requests.Session() as session:
        session.headers.update(headers(keys.acme))
        for _ in range(JOBS):
            answer = session.post(
                f"{http_api}/v1/jobs",
                files={"file": ("zidane.jpg", photo, "image/jpeg")},
                data={"pipeline": "detect"},
                timeout=30,
            )
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])

        def finished() -> bool:
            states = [session.get(f"{http_api}/v1/jobs/{i}", timeout=10).json() for i in ids]
            return all(s["state"] == "succeeded" for s in states)

        wait_until(finished, 120, "the jobs to succeed")

    def all_up() -> bool:
        return scalar(prometheus, 'sum(up{job=~"cvjobs-.*"})') == 1 + len(QUEUES)

    try:
        wait_until(all_up, 30, "every target to be up")
    except AssertionError:
        targets = requests.get(f"{prometheus}/api/v1/targets", timeout=10).json()
        raise AssertionError(
            [
                (t["scrapeUrl"], t["health"], t["lastError"])
                for t in targets["data"]["activeTargets"]
            ]
        ) from None
    succeeded = 'sum(cv_jobs_finished_total{outcome="succeeded",pipeline="detect",tenant="acme"})'
    wait_until(lambda: scalar(prometheus, succeeded) >= JOBS, 60, "Prometheus to see the jobs")

    figures = {
        "targets up": scalar(prometheus, 'sum(up{job=~"cvjobs-.*"})'),
        "targets": scalar(prometheus, 'count(up{job=~"cvjobs-.*"})'),
        "jobs submitted (detect, acme)": scalar(
            prometheus, 'sum(cv_jobs_submitted_total{pipeline="detect",tenant="acme"})'
        ),
        "jobs finished succeeded (detect, acme)": scalar(prometheus, succeeded),
        "POST /v1/jobs 202": scalar(
            prometheus, 'sum(cv_http_requests_total{operation="create_job",status="202"})'
        ),
        "inference steps (count)": scalar(
            prometheus, 'sum(cv_step_duration_seconds_count{step="inference"})'
        ),
        "inference seconds (sum)": scalar(
            prometheus, 'sum(cv_step_duration_seconds_sum{step="inference"})'
        ),
        "preprocess steps (count)": scalar(
            prometheus, 'sum(cv_step_duration_seconds_count{step="preprocess"})'
        ),
        "postprocess steps (count)": scalar(
            prometheus, 'sum(cv_step_duration_seconds_count{step="postprocess"})'
        ),
        "inference consumers": scalar(prometheus, 'max(cv_queue_consumers{queue="inference"})'),
        "model load seconds (max)": scalar(prometheus, "max(cv_model_load_seconds)"),
        "inference batches of 1": scalar(
            prometheus, 'sum(cv_inference_batch_size_bucket{le="1.0"})'
        ),
    }
    for name, value in figures.items():
        print(f"prometheus: {name}: {value:g}")

    assert figures["targets up"] == figures["targets"] == 1 + len(QUEUES)
    assert figures["jobs submitted (detect, acme)"] >= JOBS
    assert figures["jobs finished succeeded (detect, acme)"] >= JOBS
    assert figures["POST /v1/jobs 202"] >= JOBS
    for step in ("inference", "preprocess", "postprocess"):
        assert figures[f"{step} steps (count)"] >= JOBS
    assert figures["inference seconds (sum)"] > 0
    assert figures["inference consumers"] >= 1
    assert figures["model load seconds (max)"] > 0
    assert figures["inference batches of 1"] >= JOBS
    buckets = query(prometheus, 'cv_step_duration_seconds_bucket{step="inference",le="+Inf"}')
    assert buckets and all(b["metric"]["model"] for b in buckets)

    # One job, followed across the API and every worker in the JSON event log.
    deadline = time.monotonic() + 10
    while True:
        lines = [
            json.loads(line)
            for line in Path(stack_env["CV_EVENT_LOG"]).read_text().splitlines()
            if ids[0] in line
        ]
        services = {line["service"] for line in lines}
        wanted = {"api", "worker-preprocess", "worker-inference", "worker-postprocess"}
        if wanted <= services or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for line in lines:
        print("event:", json.dumps(line))
    assert wanted <= services
    assert lines[0]["event"] == "job.submitted"
    assert {"step.finished", "job.finished"} <= {line["event"] for line in lines}
    assert all(line["tenant"] == "acme" for line in lines)
