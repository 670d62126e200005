"""Sending a case as a client would and reading its answer; sampling the API's processes.

Shared by the end-to-end test (tests/e2e/test_hostile.py) and the benchmark
(benchmarks/hostile.py).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import requests

from tests.support.hostile.corpus import PIPELINE, Case
from tests.support.jobs import wait_for_job


@dataclass(frozen=True)
class Answer:
    """What the service answered: the status, and for an accepted job how it ended."""

    status: int
    content_type: str
    sent: int  # bytes of the case
    outcome: str  # the status as text, or the job's end: "succeeded", "failed:input", ...
    seconds: float  # until the HTTP answer
    job_seconds: float | None  # until the job ended (accepted jobs only)
    body: Any


def expected(case: Case) -> str:
    return str(case.expect)


def send(session: requests.Session, base: str, case: Case, job_timeout: float = 60) -> Answer:
    """POST the case as a client would; poll an accepted job until it ends (or
    ``job_timeout``). An accepted batch's jobs are cancelled at once."""
    content = case.content()
    started = time.perf_counter()
    response = session.post(
        f"{base}/v1/{case.endpoint}",
        files={case.field: (case.filename, content, case.content_type)},
        data={"pipeline": PIPELINE},
        timeout=120,
    )
    seconds = time.perf_counter() - started
    try:
        body = response.json()
    except ValueError:
        body = response.text[:500]
    status, ctype = response.status_code, response.headers.get("content-type", "")
    if status != 202:
        return Answer(status, ctype, len(content), str(status), seconds, None, body)
    if case.endpoint == "batches":
        for item in body.get("items", []):
            if item.get("job_id"):
                session.delete(f"{base}/v1/jobs/{item['job_id']}", timeout=30)
        return Answer(202, ctype, len(content), "202", seconds, None, body)
    try:
        job = wait_for_job(
            lambda j: session.get(f"{base}/v1/jobs/{j}", timeout=30).json(), body["id"], job_timeout
        )
    except AssertionError:  # not done in time: cancelled, so it holds up nothing after it
        session.delete(f"{base}/v1/jobs/{body['id']}", timeout=30)
        return Answer(202, ctype, len(content), "not done in time", seconds, None, body)
    outcome = job["state"]
    if outcome == "failed":
        outcome = f"failed:{(job.get('error') or {}).get('kind')}"
    return Answer(202, ctype, len(content), outcome, seconds, time.perf_counter() - started, job)


class Sampler:
    """Samples the resident set size and thread count of some processes (an API server's
    workers) every ``interval`` seconds, in a thread, keeping the largest of any one.

    ``find`` gives the processes; when one dies, ``find`` is called again for those that
    took its place, and ``replaced`` turns true.
    """

    def __init__(self, find: Callable[[], list[psutil.Process]], interval: float = 0.05) -> None:
        self.find = find
        self.interval = interval
        self.processes = find()
        self.first_pids = {p.pid for p in self.processes}
        self.peak_rss = 0
        self.peak_threads = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                for process in self.processes:
                    with process.oneshot():
                        rss, threads = process.memory_info().rss, process.num_threads()
                    self.peak_rss = max(self.peak_rss, rss)
                    self.peak_threads = max(self.peak_threads, threads)
            except psutil.NoSuchProcess:
                # While a server replaces a worker it has one too few, or too many.
                with contextlib.suppress(psutil.Error, AssertionError, ValueError):
                    self.processes = self.find()
                continue
            self.samples += 1

    @property
    def replaced(self) -> bool:
        """Whether a process died and another took its place during the run."""
        return {p.pid for p in self.processes} != self.first_pids
