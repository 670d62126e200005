"""The hostile corpus (tests/support/hostile/) through a real gunicorn server.

Each case must get its precise answer (a status, or an accepted job that ends as
expected) within the bounds below; afterwards the API process must have stayed small:
its peak resident set (VmHWM, and the samples taken every 50 ms) and its thread
count, and it must be the same process (no crash and restart on the way).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import requests

from tests.support.hostile import CASES, Case, Sampler, expected, send
from tests.support.keys import StackKeys, headers
from tests.support.processes import api_worker, peak_rss

pytestmark = [pytest.mark.broker, pytest.mark.workers, pytest.mark.http]
log = logging.getLogger(__name__)

MiB = 1024 * 1024
ANSWER_SECONDS = 10  # until the HTTP answer
JOB_SECONDS = 30  # until an accepted job ends
RSS_BOUND = 600 * MiB
THREADS_BOUND = 64


@pytest.fixture(scope="module")
def session(keys: StackKeys) -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.headers.update(headers(keys.acme))
        yield s


@pytest.fixture(scope="module")
def sampler(http_api: str) -> Iterator[Sampler]:
    """The API worker's RSS and threads, sampled every 50 ms while the corpus is sent."""
    with Sampler(lambda: [api_worker(http_api)]) as running:
        yield running


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_hostile_upload_gets_its_answer_in_time(
    http_api: str, session: requests.Session, sampler: Sampler, case: Case
) -> None:
    answer = send(session, http_api, case, JOB_SECONDS)
    log.info("%s: %s in %.2f s", case.name, answer.outcome, answer.seconds)
    assert answer.outcome == expected(case), f"{case.name}: {answer.body}"
    if answer.status >= 400:
        assert answer.content_type == "application/problem+json"
        assert answer.body["status"] == answer.status and answer.body["detail"]
    assert answer.seconds < ANSWER_SECONDS
    if answer.job_seconds is not None:
        assert answer.job_seconds < JOB_SECONDS


def test_the_api_process_stayed_small(http_api: str, sampler: Sampler) -> None:
    """After the corpus (pytest runs this module's tests in order)."""
    worker = api_worker(http_api)
    peak = max(peak_rss(worker), sampler.peak_rss)
    log.info(
        "API worker: peak RSS %.0f MiB, peak threads %d (%d samples)",
        peak / MiB,
        sampler.peak_threads,
        sampler.samples,
    )
    assert not sampler.replaced and {worker.pid} == sampler.first_pids, "the API worker died"
    assert sampler.samples > 0
    assert peak < RSS_BOUND, f"peak RSS {peak / MiB:.0f} MiB"
    assert sampler.peak_threads < THREADS_BOUND
