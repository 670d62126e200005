"""Submissions at GPU rates: how many POST /v1/jobs a second the API takes, and how fast.

    make bench-submissions   (.venv/bin/python benchmarks/submissions.py [--clients 32]
                              [--seconds 10] [--api-workers 2] [--batch-size 50])

It needs RabbitMQ and Redis as `make test` starts them (`make services`), and uses a
vhost, a Redis prefix and storage of its own (removed afterwards). The API is the real
server (gunicorn with ``--api-workers`` uvicorn workers, as `make start` runs it) on a
free port; the clients are this process: ``--clients`` keep-alive connections on one
event loop, each sending the same pre-built request (a 30 KB JPEG, pipeline
blur-faces) again as soon as its answer is in. A second of warm-up is not counted.

1. ``idle``: no worker runs (the jobs stay queued): submissions a second, POST latency
   p50/p95/p99, and the CPU milliseconds per POST of the API processes, RabbitMQ, Redis
   and the clients.
2. ``batches``: the same with POST /v1/batches of ``--batch-size`` images each (8
   clients): images a second, against round 1's submissions a second.
3. ``busy``: the three workers (one process each, nice 10 as a host that keeps its API
   responsive runs them) run blur-faces on the queued jobs while round 1 runs again.

Every answer must be 202; any other is counted, and a sample of each is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import save_report

from benchmarks.ceiling import CpuMeter
from benchmarks.tenants import multipart, photo
from common.contract import QUEUE_INFERENCE, QUEUE_POSTPROCESS, QUEUE_PREPROCESS
from common.settings import Settings

VHOST = "cvjobs-bench-submissions"
TENANT = "bench-submissions"
PIPELINE = "blur-faces"
WARMUP_SECONDS = 1.0
TARGET_RATE = 600.0
TARGET_BUSY_P95_MS = 30.0
TARGET_BATCH_RATIO = 5.0
CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


def small_jpeg() -> bytes:
    """zidane.jpg scaled to 640x360 (about 30 KB as a JPEG of quality 75)."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(photo(), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    ok, encoded = cv2.imencode(
        ".jpg", cv2.resize(image, (640, 360)), [cv2.IMWRITE_JPEG_QUALITY, 75]
    )
    assert ok
    return encoded.tobytes()


def http_request(port: int, path: str, key: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {key}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Load:
    """What the clients measured: latencies of the counted answers, statuses, errors."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self.sample: dict[int, bytes] = {}
        self.seconds = 0.0
        self.client_cpu = 0.0


async def _client(port: int, request: bytes, counted: float, until: float, load: Load) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (sent := time.perf_counter()) < until:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            found = CONTENT_LENGTH.search(head)
            body = await reader.readexactly(int(found.group(1)) if found else 0)
            status = int(head[9:12])
            if sent >= counted:
                load.latencies.append(time.perf_counter() - sent)
                load.statuses[status] += 1
            if status >= 300:
                load.sample.setdefault(status, body[:300])
            if b"\r\nconnection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


async def _drive(port: int, request: bytes, clients: int, seconds: float, load: Load) -> None:
    start = time.perf_counter()
    counted, until = start + WARMUP_SECONDS, start + WARMUP_SECONDS + seconds
    await asyncio.gather(*(_client(port, request, counted, until, load) for _ in range(clients)))
    load.seconds = time.perf_counter() - counted


def drive(port: int, request: bytes, clients: int, seconds: float) -> Load:
    """``clients`` connections sending ``request`` for ``seconds`` after the warm-up."""
    import uvloop

    load = Load()
    cpu = time.process_time()
    uvloop.run(_drive(port, request, clients, seconds, load))
    load.client_cpu = time.process_time() - cpu
    return load


def round_figures(load: Load, meter: CpuMeter, per_request: int) -> dict[str, Any]:
    """Rates (of 202 answers: ``per_request`` images each), latency percentiles and CPU
    per request of one round."""
    answered = sum(load.statuses.values())
    cpu = meter.ms_per_image(max(answered, 1))
    cpu["clients"] = round(1000 * load.client_cpu / max(answered, 1), 3)
    ms = sorted(1000 * t for t in load.latencies)

    def pct(q: float) -> float:
        return round(ms[min(len(ms) - 1, int(q * len(ms)))], 1) if ms else 0.0

    figures: dict[str, Any] = {
        "requests": answered,
        "requests_per_second": round(answered / load.seconds, 1),
        "images_per_second": round(load.statuses.get(202, 0) * per_request / load.seconds, 1),
        "p50_ms": round(statistics.median(ms), 1) if ms else 0.0,
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "cpu_ms_per_request": cpu,
        "statuses": {str(s): n for s, n in sorted(load.statuses.items())},
    }
    if load.sample:
        figures["refused_sample"] = {
            str(s): b.decode(errors="replace") for s, b in load.sample.items()
        }
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    from common.jobstore import JobStore
    from tests.support import stack

    stack.require_servers()
    stack.fresh_vhost(VHOST)
    tmp = Path(tempfile.mkdtemp(prefix="bench-submissions-"))
    logs = tmp / "logs"
    logs.mkdir()
    env = stack.stack_environment(tmp, tmp / "none.pt", tmp / "none-seg.pt")
    env["CV_BROKER_URL"] = stack.broker_url(VHOST, password=False)
    del env["CV_KEY_CACHE_SECONDS"]  # the tests' 0.5 s; deployed, the default
    settings = Settings.from_env(env, env_file=Path("/nonexistent"))
    store = JobStore.from_settings(settings)
    store.tenants.ensure(TENANT)
    store.tenants.set_limits(TENANT, {"active_jobs": 0, "submissions_per_minute": 0, "bytes": 0})
    key = store.apikeys.create(TENANT, "bench submissions", "member")[1]
    jpeg = small_jpeg()
    report: dict[str, Any] = {
        "clients": args.clients,
        "seconds_per_round": args.seconds,
        "api_workers": args.api_workers,
        "jpeg_bytes": len(jpeg),
        "pipeline": PIPELINE,
    }
    workers: list[Any] = []
    try:
        with stack.gunicorn(env, logs, workers=args.api_workers) as base:
            port = int(base.rsplit(":", 1)[1])
            api_pid = api_master(port)
            body, ctype = multipart({"pipeline": PIPELINE}, [("s.jpg", jpeg)], "file")
            single = http_request(port, "/v1/jobs", key, body, ctype)
            files = [(f"b{i}.jpg", jpeg) for i in range(args.batch_size)]
            body, ctype = multipart({"pipeline": PIPELINE}, files, "files")
            batch = http_request(port, "/v1/batches", key, body, ctype)

            meter = CpuMeter(api_pid, "api")
            report["idle"] = round_figures(
                drive(port, single, args.clients, args.seconds), meter, 1
            )
            print(f"submissions: idle {report['idle']}")
            meter = CpuMeter(api_pid, "api")
            report["batches"] = round_figures(
                drive(port, batch, args.batch_clients, args.seconds), meter, args.batch_size
            )
            report["batches"]["batch_size"] = args.batch_size
            report["batches"]["clients"] = args.batch_clients
            print(f"submissions: batches {report['batches']}")

            for queue in (QUEUE_PREPROCESS, QUEUE_INFERENCE, QUEUE_POSTPROCESS):
                workers.append(stack.start_worker(queue, env, logs, nice=10))
            busy_since, queued = time.monotonic(), store.jobs.active(TENANT)
            while store.jobs.active(TENANT) >= queued:  # until the first job ended
                if time.monotonic() - busy_since > 120:
                    raise SystemExit("submissions: the workers finished no job in 120 s")
                time.sleep(0.2)
            meter = CpuMeter(api_pid, "api")
            report["busy"] = round_figures(
                drive(port, single, args.clients, args.seconds), meter, 1
            )
            report["busy"]["workers"] = (
                "preprocess, inference, postprocess: 1 process each, nice 10"
            )
            print(f"submissions: busy {report['busy']}")
        idle = report["idle"]["images_per_second"]
        report["batch_over_single"] = round(report["batches"]["images_per_second"] / idle, 2)
        return report
    finally:
        for worker in workers:
            stack.stop(worker)
        stack.delete_prefix(store.redis, settings.redis_prefix)
        stack.delete_vhost(VHOST)
        if args.keep:
            print(f"submissions: logs kept in {logs}")
            shutil.rmtree(tmp / "storage", ignore_errors=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def api_master(port: int) -> int:
    """The pid of the gunicorn master bound to ``port``."""
    import psutil

    bind = f"127.0.0.1:{port}"
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        parent = process.parent()
        if bind in cmdline and not (parent and bind in parent.cmdline()):
            return int(process.pid)
    raise SystemExit(f"submissions: no gunicorn on port {port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--batch-clients", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the servers' logs")
    args = parser.parse_args()
    report = run(args)
    print(json.dumps(report, indent=2))
    save_report("submissions", report)
    checks = [
        ("idle submissions/s", report["idle"]["images_per_second"], ">=", TARGET_RATE),
        ("busy POST p95 ms", report["busy"]["p95_ms"], "<=", TARGET_BUSY_P95_MS),
        ("batch images/s over single", report["batch_over_single"], ">=", TARGET_BATCH_RATIO),
    ]
    for name, value, op, target in checks:
        met = value >= target if op == ">=" else value <= target
        print(f"submissions: {name} {value} (target {op} {target}): {met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
