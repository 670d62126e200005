"""Fixtures of the integration tests that talk to Redis without the workers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from common.jobstore import JobStore
from tests.support.stack import require_servers


@pytest.fixture
def store() -> Iterator[JobStore]:
    """A store on the real Redis under a prefix of its own, emptied afterwards."""
    require_servers()
    client = redis.Redis(host="127.0.0.1", port=6379, db=1, decode_responses=True)
    prefix = f"cvtest-store-{uuid.uuid4().hex[:8]}"
    yield JobStore(client, prefix, ttl_seconds=3600)
    keys = list(client.scan_iter(match=prefix + ":*"))
    if keys:
        client.delete(*keys)
