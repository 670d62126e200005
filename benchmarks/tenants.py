"""Tenants' figures against a running stack (`make start`), printed and saved as JSON.

    .venv/bin/python benchmarks/tenants.py [--batch 300] [--posts 200] [--only fairness|auth]

1. Fairness: tenant bench-b's single photo (blur-faces, zidane.jpg), end to end, on an
   idle stack (median of 5), then again right after tenant bench-a queued a batch of
   ``--batch`` photos; the ratio of the two (target: under 3). A's batch is cancelled
   afterwards.
2. Auth: POST /v1/jobs (a 30 KB JPEG, each job cancelled at once), ``--posts`` times,
   alternating between the stack's API (keys checked) and a second API this script
   starts with CV_AUTH=false on the next port; medians and p95 of both, in one run.
3. The quota check of one submission (``api.quotas.Quotas.admit``: two counters, two
   list sizes, a sliding-window hit in Redis), median of 2,000 calls in this process.

The figures depend on the machine: quote the ratios of one run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

# run.py beside this script (its folder is on sys.path): where results are saved.
from run import save_report

from common.settings import REPO_ROOT, Settings


def call(
    method: str, url: str, key: str | None, body: bytes | None = None, ctype: str | None = None
) -> tuple[int, Any]:
    headers = {"X-API-Key": key} if key else {}
    if ctype:
        headers["Content-Type"] = ctype
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            data, status = response.read(), response.status
    except urllib.error.HTTPError as error:
        data, status = error.read(), error.code
    return status, (json.loads(data) if data else None)


def multipart(
    fields: dict[str, str], files: list[tuple[str, bytes]], name: str
) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    for filename, content in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
            + content
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def photo() -> bytes:
    from celery_worker.samples import ultralytics_assets

    return (ultralytics_assets() / "zidane.jpg").read_bytes()


def single_latency(api: str, key: str, content: bytes) -> float:
    body, ctype = multipart({"pipeline": "blur-faces"}, [("b.jpg", content)], "file")
    started = time.perf_counter()
    status, job = call("POST", f"{api}/v1/jobs", key, body, ctype)
    if status != 202:
        raise SystemExit(f"POST answered {status}: {job}")
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.02)
        _, job = call("GET", f"{api}/v1/jobs/{job['id']}", key)
    if job["state"] != "succeeded":
        raise SystemExit(f"the job {job['state']}: {job.get('error')}")
    return time.perf_counter() - started


def fairness(api: str, keys: dict[str, str], size: int) -> dict[str, Any]:
    content = photo()
    single_latency(api, keys["b"], content)  # warm
    idle = [single_latency(api, keys["b"], content) for _ in range(5)]
    body, ctype = multipart(
        {"pipeline": "blur-faces"}, [(f"{i}.jpg", content) for i in range(size)], "files"
    )
    status, batch = call("POST", f"{api}/v1/batches", keys["a"], body, ctype)
    if status != 202:
        raise SystemExit(f"POST /v1/batches answered {status}: {batch}")
    loaded = single_latency(api, keys["b"], content)
    _, state = call("GET", f"{api}/v1/batches/{batch['id']}", keys["a"])
    waiting = state["counts"]["pending"]
    for item in batch["items"]:  # cancel what is left of A's batch
        if item["job_id"]:
            call("DELETE", f"{api}/v1/jobs/{item['job_id']}", keys["a"])
    median_idle = statistics.median(idle)
    return {
        "batch_images": size,
        "idle_median_s": round(median_idle, 3),
        "idle_s": [round(v, 3) for v in idle],
        "behind_batch_s": round(loaded, 3),
        "batch_members_still_pending": waiting,
        "ratio": round(loaded / median_idle, 2),
    }


def post_latency(apis: dict[str, tuple[str, str | None]], posts: int) -> dict[str, Any]:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo())).convert("RGB").resize((480, 270)).save(buffer, "JPEG")
    content = buffer.getvalue()
    times: dict[str, list[float]] = {name: [] for name in apis}
    for index in range(posts * len(apis)):
        name = list(apis)[index % len(apis)]
        api, key = apis[name]
        body, ctype = multipart({"pipeline": "blur-faces"}, [("p.jpg", content)], "file")
        started = time.perf_counter()
        status, job = call("POST", f"{api}/v1/jobs", key, body, ctype)
        times[name].append(time.perf_counter() - started)
        if status != 202:
            raise SystemExit(f"{name}: POST answered {status}: {job}")
        call("DELETE", f"{api}/v1/jobs/{job['id']}", key)
    out: dict[str, Any] = {"upload_bytes": len(content), "posts_each": posts}
    for name, values in times.items():
        ms = sorted(v * 1000 for v in values)
        out[name] = {
            "median_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))], 2),
        }
    out["auth_adds_median_ms"] = round(out["auth"]["median_ms"] - out["no_auth"]["median_ms"], 2)
    return out


def quota_cost(settings: Settings, tenant: str, calls: int = 2000) -> dict[str, Any]:
    from api.quotas import Quotas
    from common.jobstore import JobStore

    store = JobStore.from_url(settings.redis_url, settings.redis_prefix, settings.job_ttl_seconds)
    quotas = Quotas(settings, store)
    store.tenants.ensure(tenant)
    store.tenants.set_limits(tenant, {"submissions_per_minute": 10**9})
    quotas.admit(tenant, 1, 1000)
    durations = []
    for _ in range(calls):
        started = time.perf_counter()
        quotas.admit(tenant, 1, 1000)
        durations.append(time.perf_counter() - started)
    return {"calls": calls, "median_ms": round(statistics.median(durations) * 1000, 3)}


def start_api_without_auth(port: int, logs: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CV_AUTH": "false"}
    log = (logs / "bench-api-no-auth.log").open("ab")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "--no-control-socket",
            "-k",
            "api.server.ApiWorker",
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "api.app:create_app()",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if call("GET", f"http://127.0.0.1:{port}/health/live", None)[0] == 200:
                return process
        except urllib.error.URLError:
            pass  # not listening yet
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit("the second API did not start; see var/log/bench-api-no-auth.log")
        time.sleep(0.2)


def main() -> None:
    settings = Settings.from_env()
    bind = settings.api_bind.replace("0.0.0.0", "127.0.0.1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", default=f"http://{bind}")
    parser.add_argument("--batch", type=int, default=300)
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--only", choices=("fairness", "auth"))
    args = parser.parse_args()
    from api.keys import saved_key

    keys = {
        label: saved_key(
            REPO_ROOT / "var" / f"bench-key-{label}", f"bench-{label}", "bench", "member", settings
        )
        for label in ("a", "b")
    }
    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count()}
    if args.only in (None, "fairness"):
        report["fairness"] = fairness(args.api, keys, args.batch)
        f = report["fairness"]
        print(
            f"fairness: B's single photo {f['idle_median_s']} s idle (median of 5), "
            f"{f['behind_batch_s']} s behind A's {args.batch}-photo batch "
            f"({f['batch_members_still_pending']} members still pending): ratio {f['ratio']}"
        )
    if args.only in (None, "auth"):
        port = int(bind.rsplit(":", 1)[1]) + 1
        second = start_api_without_auth(port, REPO_ROOT / "var" / "log")
        try:
            apis = {"auth": (args.api, keys["b"]), "no_auth": (f"http://127.0.0.1:{port}", None)}
            report["post"] = post_latency(apis, args.posts)
        finally:
            second.terminate()
            second.wait(20)
        p = report["post"]
        print(
            f"POST /v1/jobs ({p['upload_bytes']} B JPEG, n={args.posts} each, alternating): "
            f"auth on median {p['auth']['median_ms']} ms p95 {p['auth']['p95_ms']} ms; "
            f"auth off median {p['no_auth']['median_ms']} ms p95 {p['no_auth']['p95_ms']} ms; "
            f"auth adds {p['auth_adds_median_ms']} ms at the median"
        )
        report["quota_check"] = quota_cost(settings, "bench-quota")
        print(f"quota check per submission: median {report['quota_check']['median_ms']} ms")
    save_report("tenants", report)


if __name__ == "__main__":
    main()
