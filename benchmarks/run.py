"""Latency figures of a running stack (start it with `make start`), printed and saved as JSON.

    .venv/bin/python benchmarks/run.py [--api http://127.0.0.1:8000] [--runs 20]

1. POST /v1/jobs with a 1 MB JPEG: client-side median and p95 over ``--posts``
   submissions (each job is cancelled at once, so the workers stay idle).
2. End-to-end latency, submit -> succeeded (polling every 5 ms), for each
   pipeline whose model is available, median/p95 of ``--runs`` sequential jobs
   on ultralytics' zidane.jpg.

The HTTP client is the stdlib; the photos come from the ultralytics wheel
(``celery_worker.samples``), the address from ``CV_API_BIND``. The figures depend on
the machine: quote ratios from one run.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from common.settings import REPO_ROOT, Settings

RESULTS = REPO_ROOT / "benchmarks" / "results"
# A member key of tenant "bench", made once and kept in var/bench-key (api.keys.saved_key).
KEY: dict[str, str] = {}


def save_report(name: str, report: dict[str, Any]) -> Path:
    """Write ``report`` to benchmarks/results/<name>-<time>.json and say where."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"saved {out.relative_to(REPO_ROOT)}")
    return out


def bench_key() -> str:
    """The member key of tenant "bench", made once and kept in var/bench-key."""
    from api.keys import saved_key

    return saved_key(
        REPO_ROOT / "var" / "bench-key", "bench", "benchmarks", "member", Settings.from_env()
    )


def use_bench_key() -> None:
    KEY["X-API-Key"] = bench_key()


def request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any] | None]:
    req = urllib.request.Request(url, data=body, method=method, headers={**KEY, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            data = response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        data, status = error.read(), error.code
    return status, (json.loads(data) if data else None)


def multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def submit(api: str, pipeline: str, filename: str, content: bytes) -> tuple[float, str]:
    body, content_type = multipart({"pipeline": pipeline}, filename, content)
    started = time.perf_counter()
    status, job = request("POST", f"{api}/v1/jobs", body, {"Content-Type": content_type})
    elapsed = time.perf_counter() - started
    if status != 202 or job is None:
        raise SystemExit(f"POST /v1/jobs answered {status}: {job}")
    return elapsed, job["id"]


def one_megabyte_jpeg() -> bytes:
    """A real JPEG of about 1 MB (a photo upscaled and re-encoded at high quality)."""
    from PIL import Image

    image = Image.open(assets() / "bus.jpg").convert("RGB").resize((1440, 1920))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=97)
    return buffer.getvalue()


def assets() -> Path:
    from celery_worker.samples import ultralytics_assets

    return ultralytics_assets()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 1),
        "p95_ms": round(percentile(ms, 0.95), 1),
        "min_ms": round(min(ms), 1),
        "max_ms": round(max(ms), 1),
    }


def post_latency(api: str, posts: int) -> dict[str, Any]:
    content = one_megabyte_jpeg()
    submit(api, "blur-faces", "warm-up.jpg", content)  # first request of a worker process
    times = []
    for index in range(posts):
        elapsed, job_id = submit(api, "blur-faces", f"post-{index}.jpg", content)
        times.append(elapsed)
        request("DELETE", f"{api}/v1/jobs/{job_id}")
    return {"upload_bytes": len(content), **summary(times)}


def end_to_end(api: str, pipeline: str, runs: int) -> dict[str, Any]:
    content = (assets() / "zidane.jpg").read_bytes()
    times, steps, model = [], [], None
    for index in range(runs + 1):  # the first run warms up and is not counted
        started = time.perf_counter()
        _, job_id = submit(api, pipeline, "zidane.jpg", content)
        while True:
            _, job = request("GET", f"{api}/v1/jobs/{job_id}")
            assert job is not None
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        if job["state"] != "succeeded":
            raise SystemExit(f"{pipeline} job {job_id} {job['state']}: {job['error']}")
        if index:
            times.append(elapsed)
            steps.append({s["name"]: s["seconds"] for s in job["steps"]})
        _, result = request("GET", f"{api}/v1/jobs/{job_id}/result")
        model = result["model"] if result else None
    step_medians = {
        name: round(statistics.median(s[name] for s in steps) * 1000, 1) for name in steps[0]
    }
    return {"model": model, **summary(times), "step_median_ms": step_medians}


def batch_end_to_end(api: str, pipeline: str, count: int) -> dict[str, Any]:
    """One batch of ``count`` photos (zidane and bus in turn): POST to completed."""
    photos = [(assets() / name).read_bytes() for name in ("zidane.jpg", "bus.jpg")]
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="pipeline"\r\n\r\n'
        f"{pipeline}\r\n".encode()
    ]
    for index in range(count):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="photo-{index}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
            + photos[index % 2]
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    started = time.perf_counter()
    status, batch = request(
        "POST",
        f"{api}/v1/batches",
        b"".join(parts),
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    if status != 202 or batch is None:
        raise SystemExit(f"POST /v1/batches answered {status}: {batch}")
    accepted = time.perf_counter() - started
    while batch["state"] != "completed":
        time.sleep(0.1)
        _, batch = request("GET", f"{api}/v1/batches/{batch['id']}")
        assert batch is not None
    elapsed = time.perf_counter() - started
    url = f"{api}/v1/batches/{batch['id']}/download"
    with urllib.request.urlopen(urllib.request.Request(url, headers=KEY), timeout=120) as zipped:
        size = len(zipped.read())
    downloaded = time.perf_counter() - started
    return {
        "images": count,
        "pipeline": pipeline,
        "accepted_s": round(accepted, 2),
        "completed_s": round(elapsed, 2),
        "images_per_s": round(count / elapsed, 2),
        "with_zip_download_s": round(downloaded, 2),
        "zip_bytes": size,
        "counts": batch["counts"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bind = Settings.from_env().api_bind.replace("0.0.0.0", "127.0.0.1")
    parser.add_argument("--api", default=f"http://{bind}")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--posts", type=int, default=50)
    parser.add_argument("--pipelines", nargs="*", help="only these (default: all available)")
    parser.add_argument("--label", default="", help="a note saved with the figures")
    parser.add_argument("--batch", type=int, default=0, help="also time a batch of N images")
    parser.add_argument("--batch-pipeline", default="detect")
    args = parser.parse_args()
    use_bench_key()

    status, ready = request("GET", f"{args.api}/health/ready")
    if status != 200:
        raise SystemExit(f"the stack at {args.api} is not ready ({ready}); run `make start`")
    _, catalogue = request("GET", f"{args.api}/v1/pipelines")
    assert catalogue is not None
    report: dict[str, Any] = {
        "machine": platform.platform(),
        "api": args.api,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    report["label"] = args.label
    if args.posts:
        report["post"] = post_latency(args.api, args.posts)
        print(
            f"POST /v1/jobs, {report['post']['upload_bytes']} byte JPEG, n={args.posts}: "
            f"median {report['post']['median_ms']} ms, p95 {report['post']['p95_ms']} ms"
        )
    for pipeline in catalogue["pipelines"]:
        name = pipeline["name"]
        if args.pipelines and name not in args.pipelines:
            continue
        if not pipeline["available"]:
            print(f"{name}: skipped, unavailable: {pipeline['unavailable_reason']}")
            report[name] = {"skipped": pipeline["unavailable_reason"]}
            continue
        figures = end_to_end(args.api, name, args.runs)
        report[name] = figures
        model = figures["model"] or {}
        print(
            f"{name} end to end (zidane.jpg, n={args.runs}, model {model.get('name')} "
            f"sha256 {str(model.get('weights_sha256'))[:12]} on {model.get('device')}): "
            f"median {figures['median_ms']} ms, p95 {figures['p95_ms']} ms; "
            f"step medians {figures['step_median_ms']}"
        )
    if args.batch:
        report["batch"] = batch_end_to_end(args.api, args.batch_pipeline, args.batch)
        print(
            f"batch of {args.batch} images, {args.batch_pipeline}: accepted in "
            f"{report['batch']['accepted_s']} s, completed in {report['batch']['completed_s']} s "
            f"({report['batch']['images_per_s']} images/s), zip of {report['batch']['zip_bytes']} "
            f"bytes downloaded at {report['batch']['with_zip_download_s']} s; "
            f"counts {report['batch']['counts']}"
        )
    save_report("bench", report)


if __name__ == "__main__":
    main()
