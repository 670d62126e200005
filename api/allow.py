"""ASGI middleware: a 405 answer names every method the path has in the spec (``Allow``).

Connexion registers one Flask rule per operation, so the ``Allow`` header Flask puts on
a 405 lists only the methods of the rule that matched the path first: ``PUT /v1/jobs``
was answered ``Allow: POST``, although ``GET /v1/jobs`` exists too (RFC 9110 15.5.6
wants them all). The header is rebuilt here from the spec's paths.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def allowed_methods(spec: dict[str, Any]) -> list[tuple[re.Pattern[str], str]]:
    """(path pattern, ``Allow`` value) for every path of ``spec``; GET implies HEAD."""
    table = []
    for template, item in (spec.get("paths") or {}).items():
        methods = [m.upper() for m in METHODS if m in item]
        if "GET" in methods and "HEAD" not in methods:
            methods.append("HEAD")
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        table.append((re.compile(f"^{pattern}/?$"), ", ".join(methods)))
    return table


class AllowHeader:
    def __init__(self, app: ASGIApp, spec: dict[str, Any]) -> None:
        self.app = app
        self.table = allowed_methods(spec)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))

        async def send_with_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message.get("status") == 405:
                allow = next((value for pattern, value in self.table if pattern.match(path)), "")
                if allow:
                    headers = [
                        (k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"
                    ]
                    message = {**message, "headers": [*headers, (b"allow", allow.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_allow)
