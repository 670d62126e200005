"""The gunicorn worker class of the API: uvicorn with a deadline on the request head.

uvicorn times out idle keep-alive connections, but not a client that opens a connection
and then sends its request line and headers a byte at a time (slowloris): such a
connection is held for ever. :class:`HeadTimeoutProtocol` closes a connection that has
not finished a request head within ``CV_HEADER_TIMEOUT_SECONDS`` of connecting, or of
its previous response; bodies are timed by ``api.limits.BodySizeLimit``.

    gunicorn -k api.server.ApiWorker -w 2 -b 127.0.0.1:8000 'api.app:create_app()'

The worker also bounds the connections one process holds (``CV_MAX_CONNECTIONS``;
uvicorn answers 503 beyond). In front of the API on a network others reach, put a
reverse proxy that buffers requests (nginx with ``client_header_timeout`` and
``client_body_timeout``); these limits are what holds without one.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from common.settings import Settings


class HeadTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request head."""

    head_timeout_seconds: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.head_timeout_seconds, self._expired)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _expired(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection whose request head took too long")
            self.transport.close()


class ApiWorker(UvicornWorker):
    """``gunicorn -k api.server.ApiWorker``: uvicorn with :class:`HeadTimeoutProtocol`."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto",
        "http": "api.server:HeadTimeoutProtocol",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = Settings.from_env()
        HeadTimeoutProtocol.head_timeout_seconds = settings.header_timeout_seconds
        # Per instance (uvicorn_worker reads self.CONFIG_KWARGS while it initialises).
        kwargs_of_this_worker = {
            **ApiWorker.CONFIG_KWARGS,
            "limit_concurrency": settings.max_connections,
        }
        setattr(self, "CONFIG_KWARGS", kwargs_of_this_worker)  # noqa: B010 (a ClassVar)
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        # The app is loaded: what it imported (hundreds of thousands of objects) moves out
        # of the garbage collector's sight, so a full collection, which a request that
        # builds a large answer triggers, no longer walks them all.
        gc.freeze()
        super().run()
