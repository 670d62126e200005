"""The store as a whole against the real Redis: the claim, the scripts."""

from __future__ import annotations

import pytest

from common.jobstore import JobStore

pytestmark = pytest.mark.broker


def test_a_claim_is_held_by_one_caller_per_period(store: JobStore) -> None:
    assert store.claim("upkeep", 60)
    assert not store.claim("upkeep", 60)
