"""Roles from the spec, the caller's rights, and the key cache (no servers: a key table)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from api.app import SPEC
from api.auth import Authenticator, Caller, operation_roles, without_security
from tests.support.keys import StaticKeys

SPEC_DOC: dict[str, Any] = yaml.safe_load(SPEC.read_text())


def test_every_operation_but_health_needs_a_role() -> None:
    roles = operation_roles(SPEC_DOC)
    operations = {
        f"{op['x-openapi-router-controller']}.{op['operationId']}"
        for methods in SPEC_DOC["paths"].values()
        for op in methods.values()
        if isinstance(op, dict) and "operationId" in op
    }
    public = {"api.handlers.health.live", "api.handlers.health.ready"}
    assert set(roles) == operations - public
    assert roles["api.handlers.jobs.create_job"] == "member"
    assert roles["api.handlers.jobs.get_job"] == "reader"
    assert roles["api.handlers.admin.create_key"] == "admin"


@pytest.mark.parametrize(
    ("role", "may"),
    [
        ("reader", {"reader"}),
        ("member", {"reader", "member"}),
        ("admin", {"reader", "member", "admin"}),
    ],
)
def test_each_role_includes_those_below(role: str, may: set[str]) -> None:
    caller = Caller("acme", role)  # type: ignore[arg-type]
    assert {r for r in ("reader", "member", "admin") if caller.can(r)} == may  # type: ignore[arg-type]


def test_auth_off_removes_every_security_requirement() -> None:
    bare = without_security(SPEC_DOC)
    assert operation_roles(bare) == {}
    assert operation_roles(SPEC_DOC)  # the original is left as it was


def test_keys_are_remembered_for_the_cache_time_only() -> None:
    keys = StaticKeys()
    secret = keys.add("cvk_" + "a" * 43)
    auth = Authenticator(keys, {}, cache_seconds=60)
    assert auth.lookup(secret) == Caller("offline", "member", "0" * 16, secret[:12])
    del keys.table[secret]  # revoked: still remembered within the cache time
    assert auth.lookup(secret) is not None
    fresh = Authenticator(keys, {}, cache_seconds=0)
    assert fresh.lookup(secret) is None
    assert fresh.lookup("cvk_unknown") is None
