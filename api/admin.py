"""Tenants, API keys and usage: what the admin operations and ``GET /v1/usage`` do.

Secrets (API keys, signing secrets) appear only in the answer that makes them;
lists show a key's visible prefix and a secret's age. The command line
(``python -m api.keys``) does the same through these functions.
"""

from __future__ import annotations

import time
from typing import Any

from api.auth import Caller
from api.errors import BadRequest, Conflict, Forbidden, NotFound
from api.services import Services
from common.jobstore.apikeys import ApiKeyError
from common.jobstore.tenants import Tenant, TenantError


def usage(svc: Services, caller: Caller, tenant: str | None) -> dict[str, Any]:
    """The tenant's use of each limit; others than the caller's own for admins only."""
    name = tenant or caller.tenant
    if name != caller.tenant and not caller.is_admin:
        raise Forbidden("only admins read other tenants' usage")
    if name != caller.tenant and svc.store.tenants.get(name) is None:
        raise NotFound(f"no tenant {name!r}")
    return svc.quotas.usage(name)


def describe(svc: Services, tenant: Tenant) -> dict[str, Any]:
    described = tenant.describe()
    return {
        "name": tenant.name,
        "created_at": tenant.created_at,
        "limits": svc.quotas.limits(tenant.name).as_dict(),
        "overrides": described["limits"],
        "signing_secrets": described["signing_secrets"],
    }


def tenants(svc: Services) -> dict[str, Any]:
    return {"tenants": [describe(svc, t) for t in svc.store.tenants.all()]}


def tenant(svc: Services, name: str) -> dict[str, Any]:
    found = svc.store.tenants.get(name)
    if found is None:
        raise NotFound(f"no tenant {name!r}")
    return describe(svc, found)


def create_tenant(svc: Services, name: str, limits: dict[str, int | None]) -> dict[str, Any]:
    kept = {k: v for k, v in limits.items() if v is not None}
    try:
        made, secret = svc.store.tenants.create(name, kept)
    except TenantError as exc:
        exists = svc.store.tenants.get(name) is not None
        raise (Conflict if exists else BadRequest)(str(exc)) from exc
    return {"tenant": describe(svc, made), "signing_secret": secret}


def update_tenant(svc: Services, name: str, limits: dict[str, int | None]) -> dict[str, Any]:
    if svc.store.tenants.get(name) is None:
        raise NotFound(f"no tenant {name!r}")
    try:
        return describe(svc, svc.store.tenants.set_limits(name, limits))
    except TenantError as exc:
        raise BadRequest(str(exc)) from exc


def rotate_signing_secret(svc: Services, name: str) -> dict[str, Any]:
    if svc.store.tenants.get(name) is None:
        raise NotFound(f"no tenant {name!r}")
    grace = svc.settings.signing_secret_grace_seconds
    secret = svc.store.tenants.rotate_secret(name, grace)
    return {
        "tenant": name,
        "signing_secret": secret,
        "previous_valid_until": round(time.time() + grace, 3),
    }


def keys(svc: Services, tenant: str | None) -> dict[str, Any]:
    return {"keys": [k.describe() for k in svc.store.apikeys.all(tenant)]}


def create_key(svc: Services, tenant: str, name: str, role: str) -> dict[str, Any]:
    """A key of ``tenant`` (made if new: its signing secret is in the answer, once)."""
    try:
        _, tenant_secret = svc.store.tenants.ensure(tenant)
        key, secret = svc.store.apikeys.create(tenant, name, role)
    except (TenantError, ApiKeyError) as exc:
        raise BadRequest(str(exc)) from exc
    return {"key": key.describe(), "secret": secret, "tenant_signing_secret": tenant_secret}


def revoke_key(svc: Services, key_id: str) -> dict[str, Any]:
    try:
        return svc.store.apikeys.revoke(key_id).describe()
    except ApiKeyError as exc:
        raise NotFound(str(exc)) from exc
