"""Polling helpers shared by the integration and end-to-end tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

TERMINAL = ("succeeded", "failed", "cancelled")


def wait_for_job(
    get: Callable[[str], dict[str, Any]], job_id: str, timeout: float = 60
) -> dict[str, Any]:
    """Poll until the job is terminal; fails the test (never hangs) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        job = get(job_id)
        if job["state"] in TERMINAL:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {job}")
        time.sleep(0.05)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
