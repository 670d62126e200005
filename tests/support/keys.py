"""API keys for the tests: real ones in the stack's Redis, or a table where Redis is down."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.clock import now_iso
from common.jobstore import JobStore
from common.jobstore.apikeys import ApiKey

OFFLINE_KEY = "cvk_offline-member-key-of-the-unit-tests-0000000"


@dataclass
class StaticKeys:
    """A key table for apps whose Redis is unreachable on purpose (``create_app(keys=...)``)."""

    table: dict[str, ApiKey] = field(default_factory=dict)

    def add(self, secret: str, tenant: str = "offline", role: str = "member") -> str:
        self.table[secret] = ApiKey(
            id=f"{len(self.table):016x}",
            prefix=secret[:12],
            tenant=tenant,
            name="test",
            role=role,
            created_at=now_iso(),
        )
        return secret

    def find(self, secret: str) -> ApiKey | None:
        return self.table.get(secret)

    def touch(self, key_id: str) -> None:
        return None


def offline_keys() -> StaticKeys:
    keys = StaticKeys()
    keys.add(OFFLINE_KEY)
    return keys


def headers(secret: str) -> dict[str, str]:
    return {"X-API-Key": secret}


@dataclass(frozen=True)
class StackKeys:
    """Keys made in the stack's Redis: two tenants' members and readers, and an admin."""

    acme: str
    acme_reader: str
    globex: str
    admin: str
    ids: dict[str, str]
    signing_secrets: dict[str, str]  # tenant -> its callback signing secret


def make_stack_keys(store: JobStore) -> StackKeys:
    made: dict[str, Any] = {}
    secrets: dict[str, str] = {}
    for label, tenant, role in (
        ("acme", "acme", "member"),
        ("acme_reader", "acme", "reader"),
        ("globex", "globex", "member"),
        ("admin", "ops", "admin"),
    ):
        _, secret = store.tenants.ensure(tenant)
        if secret is None and tenant not in secrets:  # made by an earlier session: rotate
            secret = store.tenants.rotate_secret(tenant, grace_seconds=0)
        if secret is not None:
            secrets[tenant] = secret
        key, key_secret = store.apikeys.create(tenant, f"tests {label}", role)
        made[label] = (key_secret, key.id)
    return StackKeys(
        **{label: secret for label, (secret, _) in made.items()},
        ids={label: key_id for label, (_, key_id) in made.items()},
        signing_secrets=secrets,
    )
