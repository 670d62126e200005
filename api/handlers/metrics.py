"""Handler of GET /metrics: the Prometheus text of this API's processes and the live gauges.

Security is the spec's ``MetricsToken`` scheme (:func:`token_info`): a Bearer token of its
own (``CV_METRICS_TOKEN``), so the scraper holds a secret that reads metrics and nothing
else, instead of an API key.
"""

from __future__ import annotations

import hmac
from typing import Any

from connexion.lifecycle import ConnexionRequest
from flask import Response, current_app
from prometheus_client import generate_latest

from api.metrics import EXTENSION_KEY, ScrapeEndpoint

# What Prometheus 2 parses as its classic text format (prometheus-client's newest is 1.0.0).
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def scrape() -> Response:
    endpoint: ScrapeEndpoint = current_app.extensions[EXTENSION_KEY]
    # A Response of its own: the parameters of the type are what Prometheus reads.
    return Response(generate_latest(endpoint.registry()), 200, content_type=TEXT_FORMAT)


def token_info(token: str, request: ConnexionRequest) -> dict[str, Any] | None:
    """``x-bearerInfoFunc`` of ``MetricsToken``: the configured token, compared in constant
    time; None (401) for anything else, and for everyone when no token is configured."""
    endpoint: ScrapeEndpoint = request.scope["extensions"][EXTENSION_KEY]
    expected = endpoint.token
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        return None
    return {"sub": "metrics", "scope": []}
