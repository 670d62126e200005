"""ASGI middleware: a path holding a control character is a 400, before any routing.

Starlette's route patterns stop at a line feed, so Connexion found no operation for
``/v1/jobs/abc%0A`` while Flask still routed it to the handler, which then failed outside
Connexion's context (a 500). No path of the spec holds a control character.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import BadRequest, send_problem

CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PathCharacters:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not CONTROL.search(str(scope.get("path", ""))):
            await self.app(scope, receive, send)
            return
        await send_problem(send, BadRequest("the path holds a control character"))
