"""The Host allowlist (api/hosts.py), through the real app."""

from __future__ import annotations

from dataclasses import replace

import pytest

from api.hosts import host_allowed, host_name, parse_hosts
from common.settings import Settings
from tests.support.api import offline_app


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("LocalHost:8000", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]:8000", "[::1]"),
        ("[::1]", "[::1]"),
        ("cv.example.com:443", "cv.example.com"),
        ("", ""),
    ],
)
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    ("name", "allowed", "ok"),
    [
        ("localhost", "localhost,127.0.0.1", True),
        ("evil.example", "localhost,127.0.0.1", False),
        ("a.cv.example.com", "*.cv.example.com", True),
        ("cv.example.com", "*.cv.example.com", False),
        ("xcv.example.com", "*.cv.example.com", False),
        ("anything", "*", True),
        ("", "localhost", False),
    ],
)
def test_host_allowed(name: str, allowed: str, ok: bool) -> None:
    assert host_allowed(name, parse_hosts(allowed)) is ok


def test_a_foreign_host_is_refused_and_health_answers_any(offline_settings: Settings) -> None:
    client = offline_app(offline_settings)
    refused = client.get("/openapi.json", headers={"Host": "rebound.attacker.example"})
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    assert "CV_ALLOWED_HOSTS" in refused.json()["detail"]
    assert client.get("/openapi.json", headers={"Host": "localhost:8000"}).status_code == 200
    assert client.get("/health/live", headers={"Host": "10.0.0.7:8000"}).status_code == 200


def test_prometheus_scrapes_by_address_with_its_token(offline_settings: Settings) -> None:
    client = offline_app(replace(offline_settings, metrics_token="scrape-Zq8wX3kP9rT2"))
    by_address = {"Host": "10.0.0.7:8000"}
    token = {**by_address, "Authorization": "Bearer scrape-Zq8wX3kP9rT2"}
    assert client.get("/metrics", headers=token).status_code == 200
    assert client.get("/metrics", headers={**by_address, "Authorization": ""}).status_code == 401
    assert client.get("/metricsx", headers=token).status_code == 400


def test_configured_names_are_served(offline_settings: Settings) -> None:
    client = offline_app(replace(offline_settings, allowed_hosts="cv.example.com"))
    assert client.get("/openapi.json", headers={"Host": "cv.example.com"}).status_code == 200
    assert client.get("/openapi.json", headers={"Host": "localhost"}).status_code == 400


def test_a_path_with_a_control_character_is_a_400(offline_settings: Settings) -> None:
    client = offline_app(offline_settings)
    response = client.get("/v1/jobs/abc%0A")
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert "control character" in response.json()["detail"]


def test_a_json_body_that_is_not_utf8_is_a_400() -> None:
    import asyncio
    from collections.abc import AsyncGenerator

    from connexion.exceptions import BadRequestProblem

    from api.uploads import Utf8JSONValidator

    async def body() -> AsyncGenerator[bytes, None]:
        yield b'{"name": "\xff\xfe"}'

    validator = Utf8JSONValidator(
        schema={"type": "object"}, required=True, encoding="utf-8", strict_validation=True
    )
    with pytest.raises(BadRequestProblem, match="not UTF-8"):
        asyncio.run(validator._parse(body(), {"type": "http"}))
