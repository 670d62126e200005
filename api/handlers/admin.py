"""Handlers of /v1/usage, /v1/tenants and /v1/keys (the spec gives the roles)."""

from __future__ import annotations

from typing import Any

from api import admin
from api.auth import caller
from api.services import services

Response = tuple[dict[str, Any], int, dict[str, str]]
JSON = {"Content-Type": "application/json"}


def get_usage(tenant: str | None = None) -> Response:
    return admin.usage(services(), caller(), tenant), 200, JSON


def list_tenants() -> Response:
    return admin.tenants(services()), 200, JSON


def create_tenant(body: dict[str, Any]) -> Response:
    made = admin.create_tenant(services(), body["name"], body.get("limits") or {})
    return made, 201, {**JSON, "Location": f"/v1/tenants/{body['name']}"}


def get_tenant(tenant: str) -> Response:
    return admin.tenant(services(), tenant), 200, JSON


def update_tenant(tenant: str, body: dict[str, Any]) -> Response:
    return admin.update_tenant(services(), tenant, body["limits"]), 200, JSON


def rotate_signing_secret(tenant: str) -> Response:
    return admin.rotate_signing_secret(services(), tenant), 201, JSON


def list_keys(tenant: str | None = None) -> Response:
    return admin.keys(services(), tenant), 200, JSON


def create_key(body: dict[str, Any]) -> Response:
    return admin.create_key(services(), body["tenant"], body["name"], body["role"]), 201, JSON


def revoke_key(key_id: str) -> Response:
    return admin.revoke_key(services(), key_id), 200, JSON
