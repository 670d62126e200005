"""Who is calling: API keys, resolved by Connexion from the spec's security schemes.

``swagger/openapi.yaml`` declares two schemes, ``ApiKey`` (the ``X-API-Key`` header)
and ``Bearer`` (``Authorization: Bearer <key>``), the same keys either way, and each
operation's role in its security requirement (``- ApiKey: [member]``): the spec,
not decorators, says who may do what. Connexion calls ``api_key_info`` or
``bearer_info`` with the key, in the ASGI layer before the body is read; they look
the key up (answers are remembered for ``CV_KEY_CACHE_SECONDS`` at most, so a revoked
key fails within that), check the operation's role and hand Connexion the caller,
which handlers read with ``caller()``.

Missing, unknown or revoked keys: 401 with ``WWW-Authenticate``; a role that may
not do the operation: 403. With ``CV_AUTH=false`` the spec's security is removed and
every request acts as an admin of the default tenant.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from connexion import context
from connexion.exceptions import Forbidden, OAuthProblem
from connexion.lifecycle import ConnexionRequest
from starlette.types import ASGIApp, Receive, Scope, Send

from common.contract import DEFAULT_TENANT, ROLES, Role
from common.jobstore.apikeys import ApiKey, digest

EXTENSION = "cvjobs.auth"
CHALLENGE = 'Bearer realm="cvjobs", ApiKey realm="cvjobs" header="X-API-Key"'
# How often a key's last_used_at is written (every request would be a write each).
TOUCH_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class Caller:
    tenant: str
    role: Role
    key_id: str | None = None
    key_prefix: str | None = None

    def can(self, role: Role) -> bool:
        """Whether this caller's role includes ``role`` (admin > member > reader)."""
        return ROLES.index(self.role) >= ROLES.index(role)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def token_info(self) -> dict[str, Any]:
        return {
            "sub": self.key_id,
            "tenant": self.tenant,
            "role": self.role,
            "key_prefix": self.key_prefix,
        }


ANONYMOUS_ADMIN = Caller(DEFAULT_TENANT, "admin")


class KeyLookup(Protocol):
    """Where keys are looked up: ``JobStore.apikeys`` (tests of the API alone pass a table)."""

    def find(self, secret: str) -> ApiKey | None: ...

    def touch(self, key_id: str) -> None: ...


class Authenticator:
    """Keys -> callers for one app: the key store, a short memory, each operation's role."""

    def __init__(self, keys: KeyLookup, roles: dict[str, Role], cache_seconds: float) -> None:
        self.keys = keys
        self.roles = roles
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Caller | None]] = {}
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    def lookup(self, secret: str) -> Caller | None:
        """The caller a key stands for; None when it is unknown or revoked."""
        key_hash = digest(secret)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key_hash)
        if cached is not None and cached[0] > now:
            caller = cached[1]
        else:
            key = self.keys.find(secret)
            caller = None
            if key is not None and not key.revoked and key.role in ROLES:
                caller = Caller(key.tenant, key.role, key.id, key.prefix)  # type: ignore[arg-type]
            with self._lock:
                if len(self._cache) > 10_000:  # bounded: unknown keys are cached too
                    self._cache.clear()
                self._cache[key_hash] = (now + self.cache_seconds, caller)
        if caller is not None and caller.key_id is not None:
            self._touch(caller.key_id, now)
        return caller

    def _touch(self, key_id: str, now: float) -> None:
        with self._lock:
            if self._touched.get(key_id, 0.0) > now:
                return
            self._touched[key_id] = now + TOUCH_EVERY_SECONDS
        self.keys.touch(key_id)

    def check(self, secret: str, request: ConnexionRequest) -> dict[str, Any]:
        """Connexion's token info for ``secret`` on this request's operation; 401 or 403."""
        caller = self.lookup(secret)
        if caller is None:
            raise OAuthProblem(detail="the API key is unknown or revoked")
        routing = request.scope.get("extensions", {}).get("connexion_routing", {})
        needed = self.roles.get(routing.get("operation_id") or "", "admin")
        if not caller.can(needed):
            raise Forbidden(
                detail=f"this needs the {needed} role; the key {caller.key_prefix}... is "
                f"a {caller.role} key of tenant {caller.tenant!r}"
            )
        return caller.token_info()


def _authenticator(request: ConnexionRequest) -> Authenticator:
    auth: Authenticator = request.scope["extensions"][EXTENSION]
    return auth


def api_key_info(api_key: str, request: ConnexionRequest) -> dict[str, Any]:
    """``x-apikeyInfoFunc`` of the ``ApiKey`` scheme (header ``X-API-Key``)."""
    return _authenticator(request).check(api_key, request)


def bearer_info(token: str, request: ConnexionRequest) -> dict[str, Any]:
    """``x-bearerInfoFunc`` of the ``Bearer`` scheme (``Authorization: Bearer <key>``)."""
    return _authenticator(request).check(token, request)


def caller() -> Caller:
    """The caller of the request being handled (an admin of the default tenant with auth off)."""
    info = context.context.get("token_info")
    if not info:
        return ANONYMOUS_ADMIN
    return Caller(info["tenant"], info["role"], info["sub"], info.get("key_prefix"))


class AuthContext:
    """ASGI middleware that hands the security functions this app's ``Authenticator``."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope.setdefault("extensions", {})[EXTENSION] = self.authenticator
        await self.app(scope, receive, send)


def operation_roles(spec: dict[str, Any]) -> dict[str, Role]:
    """Operation (as Connexion resolves it: ``<x-openapi-router-controller>.<operationId>``)
    -> the role its security requirement names, or the spec's default; operations open
    to all are left out."""
    roles: dict[str, Role] = {}
    for methods in spec.get("paths", {}).values():
        for operation in methods.values():
            if not isinstance(operation, dict) or "operationId" not in operation:
                continue
            role = _role_of(operation.get("security", spec.get("security") or []))
            if role is None:
                continue
            controller = operation.get("x-openapi-router-controller")
            name = operation["operationId"]
            roles[f"{controller}.{name}" if controller else name] = role
    return roles


def _role_of(security: list[dict[str, list[str]]]) -> Role | None:
    if not security:
        return None
    named = {
        scope for requirement in security for scopes in requirement.values() for scope in scopes
    }
    for role in ROLES:  # the least role any scheme asks for
        if role in named:
            return role
    return "admin"  # a scheme without a role: only admins


def without_security(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with every security requirement removed (``CV_AUTH=false``)."""
    spec = {**spec, "security": []}
    paths = {}
    for path, methods in spec.get("paths", {}).items():
        paths[path] = {
            method: ({**op, "security": []} if isinstance(op, dict) and "operationId" in op else op)
            for method, op in methods.items()
        }
    spec["paths"] = paths
    return spec
