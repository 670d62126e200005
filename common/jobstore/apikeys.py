"""API keys: who may call the API, for which tenant, in which role.

A key is ``cvk_`` and 43 random URL-safe characters (256 bits), shown once when it
is made. The store keeps only its SHA-256 (a slow hash buys nothing against keys of
that entropy) and a visible prefix, the first 12 characters, to recognise a key in
lists and logs. Roles: ``admin`` (every tenant, keys and tenants), ``member``
(submit, read, cancel and delete its tenant's jobs and batches), ``reader`` (read
only). A revoked key keeps its record, marked with the time it was revoked.
Keys: ``common.jobstore.keys``.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from common.clock import now_iso
from common.contract import ROLES
from common.jobstore.keys import StorePart
from common.jobstore.tenants import check_name

SECRET_PREFIX = "cvk_"
VISIBLE = 12  # characters of a key shown in lists: "cvk_" and 8 more


class ApiKeyError(ValueError):
    """An unknown role or key; ``str()`` says which."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    prefix: str
    tenant: str
    name: str
    role: str
    created_at: str
    last_used_at: str | None = None
    revoked_at: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def describe(self) -> dict[str, Any]:
        """What lists show: everything but the hash (the key itself is never stored)."""
        return asdict(self)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeys(StorePart):
    def create(self, tenant: str, name: str, role: str) -> tuple[ApiKey, str]:
        """A new key of ``tenant``; returns it and the secret, which is never kept."""
        check_name(tenant)
        if role not in ROLES:
            raise ApiKeyError(f"role {role!r}: one of {', '.join(ROLES)}")
        if not name or len(name) > 100:
            raise ApiKeyError("a key's name is 1 to 100 characters")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=uuid.uuid4().hex[:16],
            prefix=secret[:VISIBLE],
            tenant=tenant,
            name=name,
            role=role,
            created_at=now_iso(),
        )
        fields = {k: v for k, v in asdict(key).items() if v is not None}
        with self.redis.pipeline() as pipe:
            pipe.hset(self.keys.apikey(key.id), mapping={**fields, "sha256": digest(secret)})
            pipe.set(self.keys.apikey_hash(digest(secret)), key.id)
            pipe.sadd(self.keys.apikeys(), key.id)
            pipe.execute()
        return key, secret

    def find(self, secret: str) -> ApiKey | None:
        """The key this secret is (revoked ones too: the caller decides), or None."""
        key_id = self.redis.get(self.keys.apikey_hash(digest(secret)))
        return self.get(str(key_id)) if key_id else None

    def get(self, key_id: str) -> ApiKey | None:
        raw = self.redis.hgetall(self.keys.apikey(key_id))
        if not raw.get("id"):
            return None
        return ApiKey(
            id=raw["id"],
            prefix=raw["prefix"],
            tenant=raw["tenant"],
            name=raw["name"],
            role=raw["role"],
            created_at=raw["created_at"],
            last_used_at=raw.get("last_used_at") or None,
            revoked_at=raw.get("revoked_at") or None,
        )

    def all(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (of ``tenant``), oldest first."""
        ids = sorted(str(i) for i in self.redis.smembers(self.keys.apikeys()))
        keys = [k for k in (self.get(i) for i in ids) if k is not None]
        keys = [k for k in keys if tenant is None or k.tenant == tenant]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    def revoke(self, key_id: str) -> ApiKey:
        """Mark the key revoked (once: a second revoke keeps the first time)."""
        key = self.get(key_id)
        if key is None:
            raise ApiKeyError(f"no key {key_id!r}")
        self.redis.hsetnx(self.keys.apikey(key_id), "revoked_at", now_iso())
        found = self.get(key_id)
        assert found is not None
        return found

    def touch(self, key_id: str) -> None:
        """Note that the key was used now."""
        self.redis.hset(self.keys.apikey(key_id), "last_used_at", now_iso())
