"""The hostile corpus (tests/support/hostile/) against a real API, printed and saved as JSON.

    .venv/bin/python benchmarks/hostile.py [--api http://127.0.0.1:8000] [--only NAME...]

Without ``--api`` it starts the stack the end-to-end tests use (tests/support/stack.py:
one worker per queue and a gunicorn server, on a vhost, Redis prefix and storage folder
of its own, so a running stack and the test suite are untouched) and stops it at the
end; RabbitMQ and Redis must run (`make services`). With ``--api`` it sends to a running
stack (`make start`) as the bench key's tenant (benchmarks/run.py).

Every case is sent once, in order: its answer (the status, or how the accepted job
ended) against the one expected, and the seconds until the answer (and until the job
ended). Meanwhile the API's worker processes are sampled every 50 ms: the largest
resident set and thread count of any of them, and whether one died on the way.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import requests

from common.settings import REPO_ROOT, Settings

sys.path.insert(0, str(REPO_ROOT))  # the corpus and the stack helpers live under tests/
# run.py beside this script (its folder is on sys.path): the bench key, where results are saved.
from run import bench_key, save_report

from tests.support import hostile, stack

MiB = 1024 * 1024
READY_SECONDS = 120


def api_workers(base: str) -> list[psutil.Process]:
    """The worker processes of the gunicorn server at ``base``: children of the master
    whose command line names its address, else of the one in var/run/api.pid."""
    bind = base.removeprefix("http://").rstrip("/")
    masters = [
        p
        for p in psutil.process_iter(["cmdline"])
        if bind in (p.info["cmdline"] or []) and bind not in (p.parent().cmdline() or [])
    ]
    pidfile = REPO_ROOT / "var" / "run" / "api.pid"
    if not masters and pidfile.is_file():
        masters = [psutil.Process(int(pidfile.read_text()))]
    if len(masters) != 1:  # a ValueError, as the sampler expects while a worker is replaced
        raise ValueError(f"cannot tell the API server at {base} among {masters}")
    workers: list[psutil.Process] = masters[0].children()
    return workers


@contextmanager
def own_stack() -> Iterator[tuple[str, str]]:
    """The test suite's stack on a vhost of its own: (base URL, a member key)."""
    from common.contract import QUEUES
    from common.jobstore import JobStore
    from tests.support.keys import make_stack_keys

    stack.require_servers()
    vhost = stack.fresh_vhost(f"cvjobs-bench-hostile-{os.getpid()}")
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as folder:
        tmp = Path(folder)
        logs = tmp / "logs"
        logs.mkdir()
        # No YOLO weights: the corpus runs blur-faces, whose MTCNN ships in its wheel.
        env = stack.stack_environment(tmp, tmp / "none.pt", tmp / "none-seg.pt")
        env["CV_BROKER_URL"] = stack.broker_url(vhost, password=False)
        settings = Settings.from_env(env, env_file=Path("/nonexistent/.env"))
        store = JobStore.from_url(settings.redis_url, settings.redis_prefix, 3600)
        workers = [stack.start_worker(q, env, logs) for q in QUEUES]
        try:
            wait_for_faces(store, workers, logs)
            with stack.gunicorn(env, logs) as base:
                yield base, make_stack_keys(store).acme
        finally:
            for worker in workers:
                stack.stop(worker)
            client = stack.redis_client(1)
            keys = list(client.scan_iter(match=env["CV_REDIS_PREFIX"] + ":*"))
            if keys:
                client.delete(*keys)
            requests.delete(
                f"{stack.MANAGEMENT}/vhosts/{vhost}", auth=stack.broker_auth(), timeout=10
            )


def wait_for_faces(store: Any, workers: list[Any], logs: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while True:
        for worker in workers:
            if worker.poll() is not None:
                raise SystemExit(f"a worker exited; see its log in {logs}")
        reports = store.workers.alive()
        if any(r["models"].get("mtcnn", {}).get("available") for r in reports):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"no worker reported MTCNN within {READY_SECONDS} s")
        time.sleep(0.2)


def run(base: str, key: str, cases: list[hostile.Case]) -> dict[str, Any]:
    rows = []
    with requests.Session() as session, hostile.Sampler(lambda: api_workers(base)) as sampler:
        session.headers["X-API-Key"] = key
        for case in cases:
            answer = hostile.send(session, base, case)
            rows.append(
                {
                    "case": case.name,
                    "bytes": answer.sent,
                    "expected": hostile.expected(case),
                    "answer": answer.outcome,
                    "ok": answer.outcome == hostile.expected(case),
                    "seconds": round(answer.seconds, 3),
                    "job_seconds": None
                    if answer.job_seconds is None
                    else round(answer.job_seconds, 3),
                    "detail": detail(answer.body),
                }
            )
            print_row(rows[-1])
    return {
        "cases": rows,
        "passed": sum(r["ok"] for r in rows),
        "api": {
            "workers": len(sampler.first_pids),
            "peak_rss_mib": round(sampler.peak_rss / MiB, 1),
            "peak_threads": sampler.peak_threads,
            "samples": sampler.samples,
            "interval_s": sampler.interval,
            "a_worker_died": sampler.replaced,
        },
    }


def detail(body: Any) -> str | None:
    """A problem's detail, or a failed job's error detail."""
    if not isinstance(body, dict):
        return str(body)[:200]
    return body.get("detail") or (body.get("error") or {}).get("detail")


def print_row(row: dict[str, Any]) -> None:
    job = "" if row["job_seconds"] is None else f"{row['job_seconds']:7.2f}"
    mark = "ok" if row["ok"] else f"FAIL (expected {row['expected']})"
    print(f"{row['case']:26} {row['answer']:16} {row['seconds']:7.2f} {job:>7}  {mark}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", help="a running stack's URL (default: start one)")
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    args = parser.parse_args()
    cases = [c for c in hostile.CASES if not args.only or c.name in args.only]
    started = time.perf_counter()
    for case in cases:
        case.content()
    generation = time.perf_counter() - started
    print(f"{len(cases)} cases generated in {generation:.2f} s", flush=True)
    print(f"{'case':26} {'answer':16} {'http s':>7} {'job s':>7}")
    if args.api:
        report = run(args.api.rstrip("/"), bench_key(), cases)
    else:
        with own_stack() as (base, key):
            report = run(base, key, cases)
    api = report["api"]
    print(
        f"\n{report['passed']}/{len(cases)} as expected; API worker peak RSS "
        f"{api['peak_rss_mib']} MiB, peak threads {api['peak_threads']} "
        f"({api['samples']} samples every {api['interval_s'] * 1000:.0f} ms"
        f"{', A WORKER DIED' if api['a_worker_died'] else ''})"
    )
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "api_url": args.api or "own stack",
        "generation_s": round(generation, 3),
        **report,
    }
    save_report("hostile", report)


if __name__ == "__main__":
    main()
