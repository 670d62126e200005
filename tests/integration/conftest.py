"""Fixtures of the integration tests that talk to Redis without the workers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from common.jobstore import JobStore
from tests.support.stack import redis_client, require_servers


@pytest.fixture
def store() -> Iterator[JobStore]:
    """A store on the real Redis under a prefix of its own, emptied afterwards."""
    require_servers()
    client = redis_client(1)
    prefix = f"cvtest-store-{uuid.uuid4().hex[:8]}"
    yield JobStore(client, prefix, ttl_seconds=3600)
    keys = list(client.scan_iter(match=prefix + ":*"))
    if keys:
        client.delete(*keys)
