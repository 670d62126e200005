"""ASGI middleware: answer only requests whose ``Host`` names this service (400 otherwise).

A web page on another site can make a browser send requests to an API on loopback or on
the local network by pointing its own host name at that address (DNS rebinding); the
browser then sends that foreign name as ``Host``. ``CV_ALLOWED_HOSTS`` lists the names
the API is reached by (comma list; ``*.example.com`` matches sub-domains; ``*`` turns the
check off). The health endpoints and ``/metrics`` answer whatever the name: orchestrators
probe them, and Prometheus scrapes, by address (a pod IP, a compose service name). A page
rebinding its name cannot read ``/metrics``: that needs the scrape token, which the browser
does not hold.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import BadRequest, send_problem


def parse_hosts(text: str) -> tuple[str, ...]:
    return tuple(entry.strip().lower() for entry in text.split(",") if entry.strip())


def host_name(header: str) -> str:
    """The name of a ``Host`` value, lower-cased, without its port (IPv6 keeps brackets)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(name: str, allowed: tuple[str, ...]) -> bool:
    for entry in allowed:
        if entry == "*" or entry == name:
            return True
        if entry.startswith("*.") and name.endswith(entry[1:]) and len(name) > len(entry) - 1:
            return True
    return False


def by_address(path: str) -> bool:
    """The paths probes and scrapers reach by address, under any ``Host``."""
    return path.startswith("/health/") or path == "/metrics"


class HostAllowlist:
    def __init__(self, app: ASGIApp, allowed_hosts: str) -> None:
        self.app = app
        self.allowed = parse_hosts(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or by_address(str(scope.get("path", ""))):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if host_allowed(host_name(header), self.allowed):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        refused = BadRequest(
            "the Host header names a host this API does not serve (CV_ALLOWED_HOSTS)"
        )
        await send_problem(send, refused)
