"""Live events under load, on a stack of its own, printed and saved as JSON.

    .venv/bin/python benchmarks/events.py [--subscribers 1000] [--jobs 40] [--posts 100]

It needs RabbitMQ and Redis as `make test` starts them (`make services`), and starts
its own workers and a gunicorn of ``--api-workers`` (2) API processes on a vhost and a
Redis prefix of its own.

1. POST /v1/jobs (a 30 KB JPEG, blur-faces, each job cancelled at once) ``--posts``
   times with no subscriber: median and p95.
2. ``--subscribers`` SSE streams (GET /v1/events; nine in ten of tenant bench-ev-a, the
   rest of bench-ev-b), each its own connection, read by one asyncio client.
3. While they stay open: ``--jobs`` jobs of tenant a and a tenth of that of tenant b run
   to the end (blur-faces on zidane.jpg), then the POSTs of 1 again.

Checked: every subscriber got every event of its tenant's stream from the moment it
joined, exactly once and in order, and none of the other tenant's (compared with the
stream itself, read from Redis afterwards). Latency: from the event's ``at`` (written by
the worker or the API in the same transaction as the change) to the moment the client
parsed it, same clock. Targets (issue 11): p95 under 100 ms; POST p95 with subscribers
within 20% of without.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.tenants import call, multipart, photo
from common.settings import REPO_ROOT, Settings

RESULTS = REPO_ROOT / "benchmarks" / "results" / "events.json"
VHOST = "cvjobs-bench-events"


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def follow(
    host: str, port: int, key: str, got: list[tuple[str, str, float, float]], ready: Any
) -> None:
    """One SSE connection, read in chunks: (id, job, at, received) of each event."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"GET /v1/events: {head[:40]!r}")
    ready()
    buffer = b""
    try:
        while chunk := await reader.read(65536):
            received = time.time()
            *messages, buffer = (buffer + chunk).split(b"\n\n")
            for message in messages:
                at = message.find(b"data: ")
                if at >= 0:  # (the chunked encoding's size lines fall between messages)
                    event = json.loads(message[at + 6 :])
                    got.append((event["id"], event["job"], event["at"], received))
    finally:
        writer.close()


def subscriber_process(
    index: int, host: str, port: int, keys: list[str], ready: Any, stop: Any, out: Any
) -> None:
    """A child process holding ``len(keys)`` streams until ``stop`` is set."""

    async def main() -> list[list[tuple[str, str, float, float]]]:
        got: list[list[tuple[str, str, float, float]]] = [[] for _ in keys]
        opened = [0]

        def one_ready() -> None:
            opened[0] += 1
            if opened[0] == len(keys):
                ready.set()

        tasks = [
            asyncio.create_task(follow(host, port, key, got[n], one_ready))
            for n, key in enumerate(keys)
        ]
        while not stop.is_set():
            await asyncio.sleep(0.1)
            failed = [t for t in tasks if t.done() and t.exception()]
            if failed:
                raise RuntimeError(str(failed[0].exception()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return got

    out.put((index, asyncio.run(main())))


def post_times(api: str, key: str, n: int, content: bytes) -> list[float]:
    body, ctype = multipart({"pipeline": "blur-faces"}, [("b.jpg", content)], "file")
    times = []
    for _ in range(n):
        started = time.perf_counter()
        status, job = call("POST", f"{api}/v1/jobs", key, body, ctype)
        times.append(time.perf_counter() - started)
        assert status == 202, job
        call("DELETE", f"{api}/v1/jobs/{job['id']}", key)
    return times


def run_jobs(api: str, key: str, n: int, content: bytes) -> list[str]:
    body, ctype = multipart({"pipeline": "blur-faces"}, [("z.jpg", content)], "file")
    ids = []
    for _ in range(n):
        status, job = call("POST", f"{api}/v1/jobs", key, body, ctype)
        assert status == 202, job
        ids.append(job["id"])
    for job_id in ids:
        while call("GET", f"{api}/v1/jobs/{job_id}", key)[1]["state"] in ("queued", "running"):
            time.sleep(0.2)
    return ids


def measure(args: argparse.Namespace, keys: dict[str, str], store: Any) -> dict[str, Any]:
    parts = urlsplit(args.api)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    small, content = photo_small(), photo()
    post_times(args.api, keys["a"], 5, small)  # warm
    quiet = post_times(args.api, keys["a"], args.posts, small)

    # The subscribers in processes of their own, so that the POSTs timed here do not
    # wait for this process' parsing of every event.
    context = multiprocessing.get_context("spawn")
    tenants = ["a" if n % 10 else "b" for n in range(args.subscribers)]
    shares = [
        list(range(c, args.subscribers, args.client_processes))
        for c in range(args.client_processes)
    ]
    stop, out = context.Event(), context.Queue()
    readies, children = [], []
    for index, share in enumerate(shares):
        ready = context.Event()
        child = context.Process(
            target=subscriber_process,
            args=(index, host, port, [keys[tenants[n]] for n in share], ready, stop, out),
        )
        child.start()
        readies.append(ready)
        children.append(child)
    started = time.monotonic()
    for ready in readies:
        if not ready.wait(120):
            raise RuntimeError("the subscribers did not all connect in 120 s")
    connect_seconds = time.monotonic() - started
    time.sleep(1)  # every hub reads its tenants
    marks = {t: store.events.last_id(f"bench-ev-{t}") for t in ("a", "b")}

    jobs_b = max(args.jobs // 10, 1)
    with ThreadPoolExecutor(2) as pool:
        done = [
            pool.submit(run_jobs, args.api, keys["a"], args.jobs, content),
            pool.submit(run_jobs, args.api, keys["b"], jobs_b, content),
        ]
        ids = {"a": set(done[0].result()), "b": set(done[1].result())}
    loaded = post_times(args.api, keys["a"], args.posts, small)
    time.sleep(1)
    stop.set()
    results = [out.get(timeout=120) for _ in children]
    for child in children:
        child.join(30)
    by_stream: dict[int, list[tuple[str, str, float, float]]] = {}
    for index, got in results:
        by_stream.update(zip(shares[index], got, strict=True))

    expected = {
        t: [e.id for e in store.events.read(f"bench-ev-{t}", marks[t], count=1_000_000)]
        for t in ("a", "b")
    }
    exact = sum(1 for n, got in by_stream.items() if [g[0] for g in got] == expected[tenants[n]])
    foreign = sum(
        1
        for n, got in by_stream.items()
        for g in got
        if g[1] in ids["b" if tenants[n] == "a" else "a"]
    )
    latencies = [1000 * (g[3] - g[2]) for got in by_stream.values() for g in got]
    return {
        "subscribers": args.subscribers,
        "client_processes": args.client_processes,
        "connect_seconds": round(connect_seconds, 2),
        "jobs": {"a": args.jobs, "b": jobs_b},
        "events_in_streams": {t: len(v) for t, v in expected.items()},
        "events_delivered": len(latencies),
        "subscribers_exact": exact,
        "foreign_events": foreign,
        "latency_ms": {
            "p50": round(statistics.median(latencies), 1) if latencies else None,
            "p95": round(p(latencies, 0.95), 1),
            "p99": round(p(latencies, 0.99), 1),
            "max": round(max(latencies), 1) if latencies else None,
        },
        "post_ms": {
            "without": {"p50": ms(statistics.median(quiet)), "p95": ms(p(quiet, 0.95))},
            "with": {"p50": ms(statistics.median(loaded)), "p95": ms(p(loaded, 0.95))},
        },
    }


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def photo_small() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo())).resize((320, 180)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


@contextmanager
def own_stack(api_workers: int) -> Iterator[tuple[str, Any, dict[str, str]]]:
    """RabbitMQ and Redis as `make test` runs them; a vhost, Redis prefix, storage, one
    worker per queue and a gunicorn with ``api_workers`` processes of this benchmark's own
    (so a running stack is never touched). Yields the API's URL, the store and the keys."""
    from common.contract import QUEUES
    from common.jobstore import JobStore
    from tests.support import stack

    stack.require_servers()
    stack.fresh_vhost(VHOST)
    tmp = Path(tempfile.mkdtemp(prefix="bench-events-"))
    env = stack.stack_environment(tmp, tmp / "none.pt", tmp / "none-seg.pt")
    env["CV_BROKER_URL"] = stack.broker_url(VHOST, password=False)
    env["CV_KEY_CACHE_SECONDS"] = "2"
    settings = Settings.from_env(env, env_file=Path("/nonexistent"))
    store = JobStore.from_settings(settings)
    keys = {}
    for t in ("a", "b"):
        store.tenants.ensure(f"bench-ev-{t}")
        store.tenants.set_limits(
            f"bench-ev-{t}", {"active_jobs": 0, "submissions_per_minute": 0, "bytes": 0}
        )
        keys[t] = store.apikeys.create(f"bench-ev-{t}", "bench events", "member")[1]
    logs = tmp / "logs"
    logs.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = [stack.start_worker(q, env, logs) for q in QUEUES]
    with (logs / "api.log").open("ab") as out:
        api = subprocess.Popen(
            [
                str(stack.VENV_BIN / "gunicorn"),
                "--no-control-socket",
                "-k",
                "api.server.ApiWorker",
                "-w",
                str(api_workers),
                "-b",
                f"127.0.0.1:{port}",
                "api.app:create_app()",
            ],
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    processes.append(api)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, ready = call("GET", f"{base}/health/ready", None)
                if status == 200 and ready.get("workers"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the benchmark's stack is not ready; see {logs}")
            time.sleep(0.5)
        yield base, store, keys
    finally:
        for process in processes:
            stack.stop(process)
        leftovers = list(store.redis.scan_iter(match=settings.redis_prefix + ":*"))
        if leftovers:
            store.redis.delete(*leftovers)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--posts", type=int, default=100)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--client-processes", type=int, default=2)
    args = parser.parse_args()
    with own_stack(args.api_workers) as (api, store, keys):
        args.api = api
        report = measure(args, keys, store)
    print(json.dumps(report, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    latency_ok = report["latency_ms"]["p95"] < 100
    post = report["post_ms"]
    post_ok = post["with"]["p95"] <= 1.2 * post["without"]["p95"]
    complete = report["subscribers_exact"] == args.subscribers and not report["foreign_events"]
    print(
        f"exactly once, in order, tenants apart: {complete}; p95 < 100 ms: {latency_ok}; "
        f"POST p95 within 20%: {post_ok}"
    )
    return 0 if complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
