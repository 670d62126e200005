"""Tenants and keys in the real Redis: names, limits, signing secrets and their rotation."""

from __future__ import annotations

import time

import pytest

from common.jobstore import JobStore
from common.jobstore.apikeys import ApiKeyError
from common.jobstore.tenants import TenantError

pytestmark = pytest.mark.broker


def test_a_rotated_secret_stays_valid_for_the_grace_period(store: JobStore) -> None:
    tenant, first = store.tenants.create("acme")
    assert tenant.valid_secrets() == [first]
    second = store.tenants.rotate_secret("acme", grace_seconds=60)
    assert store.tenants.require("acme").valid_secrets() == [second, first]
    later = time.time() + 61
    assert store.tenants.require("acme").valid_secrets(now=later) == [second]
    third = store.tenants.rotate_secret("acme", grace_seconds=0)  # at once: only the new one
    assert store.tenants.require("acme").valid_secrets(now=time.time() + 1) == [third]


def test_names_and_limits_are_checked(store: JobStore) -> None:
    with pytest.raises(TenantError, match="lower-case"):
        store.tenants.create("Acme Corp")
    store.tenants.create("acme", {"active_jobs": 5})
    with pytest.raises(TenantError, match="exists already"):
        store.tenants.create("acme")
    with pytest.raises(TenantError, match="unknown limits"):
        store.tenants.set_limits("acme", {"gpus": 1})
    with pytest.raises(TenantError, match="whole numbers"):
        store.tenants.set_limits("acme", {"bytes": -1})
    assert store.tenants.set_limits("acme", {"bytes": 10}).limits == {"active_jobs": 5, "bytes": 10}
    assert store.tenants.set_limits("acme", {"active_jobs": None}).limits == {"bytes": 10}
    assert store.tenants.names() == ["acme"]


def test_keys_are_found_by_their_secret_and_revoked_once(store: JobStore) -> None:
    key, secret = store.apikeys.create("acme", "ci", "member")
    assert store.apikeys.find(secret) == key
    assert store.apikeys.find(secret + "x") is None
    revoked = store.apikeys.revoke(key.id)
    assert revoked.revoked and store.apikeys.revoke(key.id).revoked_at == revoked.revoked_at
    with pytest.raises(ApiKeyError, match="role"):
        store.apikeys.create("acme", "ci", "owner")
    with pytest.raises(ApiKeyError, match="no key"):
        store.apikeys.revoke("0" * 16)
