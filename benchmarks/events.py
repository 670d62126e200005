"""Live events under load, on a stack of its own, printed and saved as JSON.

    make bench-events   (.venv/bin/python benchmarks/events.py [--subscribers 1000] ...)

It needs RabbitMQ and Redis as `make test` starts them (`make services`), and starts
its own workers and a gunicorn of ``--api-workers`` (2) API processes on a vhost and a
Redis prefix of its own. ``--event-workers N`` serves the streams from a second gunicorn
of N processes (as a deployment that routes /v1/events to processes of their own), and
``--worker-nice``, ``--event-nice``, ``--client-nice`` lower the CPU priority of the
Celery workers, that second gunicorn and the subscribers' processes; the API's own
``CV_EVENTS_GATHER_MS`` applies as set in the environment.

1. POST /v1/jobs (a 30 KB JPEG, blur-faces, each job cancelled at once) ``--posts``
   times with no subscriber: median and p95.
2. ``--subscribers`` SSE streams (GET /v1/events; nine in ten of tenant bench-ev-a, the
   rest of bench-ev-b), each its own connection, in ``--client-processes`` (2) uvloop
   processes that note each chunk's arrival time and parse it after the run.
3. While they stay open: ``--jobs`` jobs of tenant a and a tenth of that of tenant b run
   to the end (blur-faces on zidane.jpg), then the POSTs of 1 again.

Checked: every subscriber got every event of its tenant's stream from the moment it
joined, exactly once and in order, and none of the other tenant's (compared with the
stream itself, read from Redis afterwards). Latency: from the event's ``at`` (written by
the worker or the API in the same transaction as the change) to the moment the client
received it, same clock. Targets (issue 11): p95 under 100 ms; POST p95 with subscribers
within 20% of without.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.tenants import call, multipart, photo
from common.settings import REPO_ROOT, Settings

RESULTS = REPO_ROOT / "benchmarks" / "results" / "events.json"
VHOST = "cvjobs-bench-events"


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Follow(asyncio.Protocol):
    """One SSE connection. It only keeps what arrives and when (``time.time()``): the
    parsing waits until the run is over, so a client costs the machine little more than
    its reads, as a browser elsewhere would cost it nothing."""

    def __init__(self, request: bytes, ready: Any) -> None:
        self.request = request
        self.ready = ready
        self.chunks: list[tuple[float, bytes]] = []
        self.head = b""
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport  # (uvloop's is no asyncio.Transport subclass)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.ready is None:
            self.chunks.append((time.time(), data))
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            head, _, rest = self.head.partition(b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                self.lost.set_exception(RuntimeError(f"GET /v1/events: {head[:40]!r}"))
                return
            self.chunks.append((time.time(), rest))
            self.ready, ready = None, self.ready
            ready()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def events(self) -> list[tuple[str, str, float, float]]:
        """(id, job, at, received) of each event, from the chunks kept."""
        got = []
        buffer = b""
        for received, chunk in self.chunks:
            *messages, buffer = (buffer + chunk).split(b"\n\n")
            for message in messages:
                at = message.find(b"data: ")
                if at >= 0:  # (the chunked encoding's size lines fall between messages)
                    event = json.loads(message[at + 6 :])
                    got.append((event["id"], event["job"], event["at"], received))
        return got


def subscriber_process(
    index: int,
    host: str,
    port: int,
    keys: list[str],
    ready: Any,
    stop: Any,
    out: Any,
    nice: int = 0,
) -> None:
    """A child process holding ``len(keys)`` streams until ``stop`` is set."""
    if nice:
        os.nice(nice)

    async def main() -> list[list[tuple[str, str, float, float]]]:
        loop = asyncio.get_running_loop()
        opened = [0]

        def one_ready() -> None:
            opened[0] += 1
            if opened[0] == len(keys):
                ready.set()

        follows = []
        for key in keys:
            request = (
                f"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
                "Accept: text/event-stream\r\n\r\n"
            ).encode()
            _, follow = await loop.create_connection(
                functools.partial(Follow, request, one_ready), host, port
            )
            follows.append(follow)
        while not stop.is_set():
            await asyncio.sleep(0.1)
            failed = [f for f in follows if f.lost.done() and f.lost.exception()]
            if failed:
                raise RuntimeError(str(failed[0].lost.exception()))
            if any(f.lost.done() for f in follows):
                raise RuntimeError("the API closed an event stream")
        for follow in follows:
            follow.transport.close()
        return [follow.events() for follow in follows]

    uvloop.install()
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
    parts = urlsplit(args.streams)
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
            daemon=True,  # never outlives a benchmark that failed
            target=subscriber_process,
            args=(
                index,
                host,
                port,
                [keys[tenants[n]] for n in share],
                ready,
                stop,
                out,
                args.client_nice,
            ),
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
        "setup": {
            "api_workers": args.api_workers,
            "event_workers": args.event_workers,
            "worker_nice": args.worker_nice,
            "event_nice": args.event_nice,
            "client_nice": args.client_nice,
            "events_gather_ms": float(os.environ.get("CV_EVENTS_GATHER_MS") or 0),
        },
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


def start_api(
    env: dict[str, str], log: Path, workers: int, processes: list[Any], nice: int = 0
) -> str:
    """A gunicorn of ``workers`` API processes on a free port (added to ``processes``)."""
    from tests.support import stack

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(stack.VENV_BIN / "gunicorn"), "--no-control-socket"]
    command += ["-k", "api.server.ApiWorker", "-w", str(workers), "-b", f"127.0.0.1:{port}"]
    processes.append(stack.spawn([*command, "api.app:create_app()"], env, log, nice))
    return f"http://127.0.0.1:{port}"


@contextmanager
def own_stack(
    api_workers: int,
    worker_nice: int = 0,
    event_workers: int = 0,
    event_nice: int = 0,
    vhost: str = VHOST,
    setup: Callable[[Path, dict[str, str]], None] | None = None,
) -> Iterator[tuple[str, str, Any, dict[str, str]]]:
    """RabbitMQ and Redis as `make test` runs them; a vhost, Redis prefix, storage, one
    worker per queue and a gunicorn with ``api_workers`` processes of this benchmark's own
    (so a running stack is never touched). ``setup(folder, env)`` runs before the processes
    start (weights into ``folder / "models"``, settings into ``env``). Yields the API's
    URL, the events' URL, the store and the keys of tenants ``a`` and ``b``."""
    from common.contract import QUEUES
    from common.jobstore import JobStore
    from tests.support import stack

    stack.require_servers()
    stack.fresh_vhost(vhost)
    tmp = Path(tempfile.mkdtemp(prefix="bench-events-"))
    env = stack.stack_environment(tmp, tmp / "none.pt", tmp / "none-seg.pt")
    env["CV_BROKER_URL"] = stack.broker_url(vhost, password=False)
    env["CV_KEY_CACHE_SECONDS"] = "2"
    if setup is not None:
        setup(tmp, env)
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
    processes = [stack.start_worker(q, env, logs, worker_nice) for q in QUEUES]
    base = start_api(env, logs / "api.log", api_workers, processes)
    streams = base
    if event_workers:
        streams = start_api(env, logs / "api-events.log", event_workers, processes, event_nice)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                answers = [call("GET", f"{url}/health/ready", None) for url in {base, streams}]
                if all(status == 200 and ready.get("workers") for status, ready in answers):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the benchmark's stack is not ready; see {logs}")
            time.sleep(0.5)
        yield base, streams, store, keys
    finally:
        for process in processes:
            stack.stop(process)
        stack.delete_prefix(store.redis, settings.redis_prefix)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--posts", type=int, default=100)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--worker-nice", type=int, default=0)
    parser.add_argument("--event-workers", type=int, default=0)
    parser.add_argument("--event-nice", type=int, default=0)
    parser.add_argument("--client-nice", type=int, default=0)
    args = parser.parse_args()
    stack = own_stack(args.api_workers, args.worker_nice, args.event_workers, args.event_nice)
    with stack as (api, streams, store, keys):
        args.api, args.streams = api, streams
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
