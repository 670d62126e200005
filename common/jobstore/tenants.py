"""Tenants: the teams that share one installation, each with its limits and signing secret.

A tenant has a name, limits that override the settings' defaults (``CV_QUOTA_*``),
and the secret its callbacks are signed with (Standard Webhooks, ``whsec_...``).
The secret is shown once, when the tenant is made or the secret rotated; after a
rotation the previous one stays valid for a grace period, and callbacks carry a
signature of each valid secret meanwhile. Secrets are kept as they are (an HMAC
needs them), so Redis must be closed to others. Keys: ``common.jobstore.keys``.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from common.clock import now_iso
from common.jobstore.keys import StorePart

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# A new tenant's hash and its place in the set, at once (a reader never sees half of it).
# KEYS: tenant, tenants. ARGV: name, then fields and values.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""
LIMITS = ("active_jobs", "submissions_per_minute", "bytes")


class TenantError(ValueError):
    """A tenant name that is malformed, taken, or unknown; ``str()`` says which."""


def new_signing_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 24 random bytes, base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass(frozen=True)
class Tenant:
    name: str
    created_at: str
    limits: dict[str, int] = field(default_factory=dict)  # the overrides only
    # [{"secret", "created_at", "expires": unix time or None}], newest first
    secrets: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def valid_secrets(self, now: float | None = None) -> list[str]:
        """The secrets callbacks are signed with now: the current one and any in grace."""
        now = time.time() if now is None else now
        return [s["secret"] for s in self.secrets if s["expires"] is None or s["expires"] > now]

    def describe(self) -> dict[str, Any]:
        """What the admin API shows: never a secret."""
        return {
            "name": self.name,
            "created_at": self.created_at,
            "limits": dict(self.limits),
            "signing_secrets": [
                {"created_at": s["created_at"], "expires": s["expires"]} for s in self.secrets
            ],
        }


class Tenants(StorePart):
    def __post_init__(self) -> None:
        self._create = self.redis.register_script(_CREATE)

    def create(self, name: str, limits: dict[str, int] | None = None) -> tuple[Tenant, str]:
        """A new tenant and its signing secret (shown once). ``TenantError`` if it exists."""
        check_name(name)
        secret = new_signing_secret()
        entry = {"secret": secret, "created_at": now_iso(), "expires": None}
        fields = {
            "name": name,
            "created_at": now_iso(),
            "limits": json.dumps(_checked_limits(limits or {})),
            "secrets": json.dumps([entry]),
        }
        keys = [self.keys.tenant(name), self.keys.tenants()]
        if not self._create(keys=keys, args=[name, *(x for kv in fields.items() for x in kv)]):
            raise TenantError(f"tenant {name!r} exists already")
        return self._decode(fields), secret

    def ensure(self, name: str) -> tuple[Tenant, str | None]:
        """The tenant, made if missing; its secret only when made now."""
        found = self.get(name)
        if found is not None:
            return found, None
        try:
            return self.create(name)
        except TenantError:  # made meanwhile by another process
            return self.require(name), None

    def get(self, name: str) -> Tenant | None:
        if not TENANT_NAME.match(name):
            return None
        raw = self.redis.hgetall(self.keys.tenant(name))
        return self._decode(raw) if raw.get("created_at") else None

    def require(self, name: str) -> Tenant:
        found = self.get(name)
        if found is None:
            raise TenantError(f"no tenant {name!r}")
        return found

    def names(self) -> list[str]:
        return sorted(str(n) for n in self.redis.smembers(self.keys.tenants()))

    def all(self) -> list[Tenant]:
        return [t for t in (self.get(n) for n in self.names()) if t is not None]

    def set_limits(self, name: str, limits: dict[str, int | None]) -> Tenant:
        """Change a tenant's overrides; None removes one (the default applies again)."""
        tenant = self.require(name)
        merged: dict[str, Any] = {**tenant.limits, **limits}
        kept = _checked_limits({k: v for k, v in merged.items() if v is not None})
        self.redis.hset(self.keys.tenant(name), "limits", json.dumps(kept))
        return self.require(name)

    def rotate_secret(self, name: str, grace_seconds: float) -> str:
        """A new signing secret (shown once); the older ones stay valid ``grace_seconds``."""
        tenant = self.require(name)
        now = time.time()
        # Every older secret stops at most ``grace_seconds`` from now (0: at once, as for
        # a leaked one).
        until = now + grace_seconds
        kept = [
            {**s, "expires": until if s["expires"] is None else min(s["expires"], until)}
            for s in tenant.secrets
            if s["expires"] is None or s["expires"] > now
        ]
        secret = new_signing_secret()
        entries = [{"secret": secret, "created_at": now_iso(), "expires": None}, *kept]
        self.redis.hset(self.keys.tenant(name), "secrets", json.dumps(entries))
        return secret

    @staticmethod
    def _decode(raw: dict[str, Any]) -> Tenant:
        return Tenant(
            name=str(raw["name"]),
            created_at=str(raw["created_at"]),
            limits=json.loads(raw.get("limits") or "{}"),
            secrets=json.loads(raw.get("secrets") or "[]"),
        )


def check_name(name: str) -> None:
    if not TENANT_NAME.match(name):
        raise TenantError(
            f"tenant name {name!r}: lower-case letters, digits, '-' and '_', at most 63"
        )


def _checked_limits(limits: dict[str, Any]) -> dict[str, int]:
    unknown = sorted(set(limits) - set(LIMITS))
    if unknown:
        raise TenantError(f"unknown limits {unknown}; the limits are {', '.join(LIMITS)}")
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in limits.values()):
        raise TenantError("limits are whole numbers, 0 or more (0: no limit)")
    return {k: int(v) for k, v in limits.items()}
