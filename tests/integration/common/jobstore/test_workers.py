"""The worker registry against the real Redis: reports live for their TTL, upkeep drops the dead."""

from __future__ import annotations

import pytest

from common.jobstore import JobStore

pytestmark = pytest.mark.broker


def test_stale_reports_are_skipped_by_reads_and_dropped_by_prune(store: JobStore) -> None:
    store.workers.report("alive", {"name": "alive", "models": {}}, ttl_seconds=60)
    store.workers.report("dead", {"name": "dead", "models": {}}, ttl_seconds=-1)
    assert [r["name"] for r in store.workers.alive()] == ["alive"]
    assert store.redis.hlen(store.keys.workers()) == 2  # reading wrote nothing
    assert store.workers.prune() == 1
    assert store.redis.hkeys(store.keys.workers()) == ["alive"]
    store.workers.forget("alive")
    assert store.workers.alive() == []
