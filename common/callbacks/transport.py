"""The one HTTP client that delivers callbacks, connecting only where the policy allows.

Every address a host resolves to is checked, and the delivery then connects to
one of those very addresses: ``GuardedBackend`` resolves once, inside the
connection, so a DNS answer that changes between the check and the connect
(rebinding) cannot point the POST elsewhere. The Host header and TLS (SNI and the
certificate check) keep the URL's host name.

Why a transport of our own: httpx 0.28's ``HTTPTransport`` takes no network
backend. Replacing its private ``_pool`` would work but breaks silently when httpx
renames it; ``GuardedTransport`` is the documented custom-transport hook
(``httpx.BaseTransport``) around httpcore's public ``ConnectionPool(network_backend=...)``,
at the cost of converting requests, responses and errors itself (as httpx does).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import httpcore
import httpx

from common.callbacks.policy import CallbackPolicy, CallbackRefused, Resolver, resolve

# A callback is a POST and a status line: timeouts per phase, a few addresses tried,
# and at most this much of the answer read, so the whole attempt stays well within
# the notify task's 30 s (the task's soft time limit covers a receiver that trickles).
TIMEOUT = httpx.Timeout(connect=3.0, read=10.0, write=5.0, pool=3.0)
MAX_ADDRESSES_TRIED = 3
MAX_RESPONSE_BYTES = 64 * 1024


class GuardedBackend(httpcore.NetworkBackend):
    """Connects only to addresses ``policy`` allows, found by one call of ``resolver``.

    ``backend`` makes the connections (``httpcore.SyncBackend`` unless given): it is
    handed the vetted IP address, never the host name, so nothing resolves again.
    """

    def __init__(
        self,
        policy: CallbackPolicy,
        resolver: Resolver = resolve,
        backend: httpcore.NetworkBackend | None = None,
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._backend = backend or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._policy.vet(host, port, self._resolver)
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses[:MAX_ADDRESSES_TRIED]:
            try:
                return self._backend.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # vet returns at least one address
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("callbacks never use Unix sockets")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


# httpcore's errors as the httpx ones of the same name, most specific first.
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except tuple(core for core, _ in _ERRORS) as exc:
        mapped = next(ours for core, ours in _ERRORS if isinstance(exc, core))
        raise mapped(str(exc)) from exc


class _Body(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport whose every connection goes through a ``GuardedBackend``.

    No proxy, ever; TLS verifies the URL's host name against the system's trust
    store (on-prem receivers are often signed by an in-house CA the hosts trust).
    """

    def __init__(
        self,
        policy: CallbackPolicy,
        resolver: Resolver = resolve,
        backend: httpcore.NetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context or ssl.create_default_context(),
            max_connections=1,
            network_backend=GuardedBackend(policy, resolver, backend),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            answer = self._pool.handle_request(core)
        assert isinstance(answer.stream, Iterable)
        return httpx.Response(
            status_code=answer.status,
            headers=answer.headers,
            stream=_Body(answer.stream),
            extensions=answer.extensions,
        )

    def close(self) -> None:
        self._pool.close()


def callback_client(
    policy: CallbackPolicy,
    resolver: Resolver = resolve,
    backend: httpcore.NetworkBackend | None = None,
    timeout: httpx.Timeout = TIMEOUT,
) -> httpx.Client:
    """The client for callbacks: guarded connections, no redirects followed, no proxy or
    .netrc credentials taken from the environment (``trust_env=False``)."""
    return httpx.Client(
        transport=GuardedTransport(policy, resolver, backend),
        trust_env=False,
        follow_redirects=False,
        timeout=timeout,
    )


def post_callback(client: httpx.Client, url: str, body: bytes, headers: Mapping[str, str]) -> int:
    """POST ``body`` to ``url``; the status code (a 3xx is not followed).

    Reads at most ``MAX_RESPONSE_BYTES`` of the answer. Raises ``CallbackRefused``
    when the policy refuses the URL or its addresses, ``httpx.HTTPError`` when no
    answer came.
    """
    try:
        request = client.build_request(
            "POST", url, content=body, headers={"Accept-Encoding": "identity", **headers}
        )
    # httpx 0.28 lets idna's UnicodeError out of some host names ("xn--a.com").
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise CallbackRefused("callback_url is malformed") from exc
    response = client.send(request, stream=True)
    try:
        read = 0
        for chunk in response.iter_raw():
            read += len(chunk)
            if read >= MAX_RESPONSE_BYTES:
                break
    finally:
        response.close()
    return response.status_code
