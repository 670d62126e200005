"""Which callback addresses the service posts to, and the client that posts there."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore
import httpx
import pytest

from common.callbacks.policy import CallbackPolicy, CallbackRefused, check_callback_url
from common.callbacks.transport import (
    MAX_ADDRESSES_TRIED,
    MAX_RESPONSE_BYTES,
    callback_client,
    post_callback,
)
from common.settings import Settings

# What the fake resolver answers; a name not here does not resolve.
DNS = {
    "hooks.example": ["93.184.215.14"],
    "v6.example": ["2606:4700::1111"],
    "localhost": ["127.0.0.1", "::1"],
    "hooks.lan": ["192.168.1.5"],
    "mixed.example": ["93.184.215.14", "10.0.0.1"],
    "mapped.example": ["::ffff:10.0.0.1"],
    "empty.example": [],
}


def fake_resolve(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return DNS[host]


def check(url: str, hosts: str = "", loopback: bool = False, ports: str = "80,443") -> None:
    check_callback_url(url, hosts, loopback, ports, resolver=fake_resolve)


@pytest.mark.parametrize(
    ("url", "hosts", "loopback", "ports"),
    [
        ("http://8.8.8.8/", "", False, "80,443"),
        ("https://hooks.example/x?y=1", "", False, "80,443"),
        ("https://[2606:4700::1111]/", "", False, "80,443"),
        ("http://v6.example:80/", "", False, "80,443"),
        ("https://8.8.8.8:8443/", "", False, "443,8443"),
        ("http://8.8.8.8:6379/", "", False, "*"),
        ("http://10.1.2.3/hook", "10.0.0.0/8", False, "80,443"),
        ("http://Hooks.Lan/", "hooks.lan", False, "80,443"),
        ("http://hooks.lan/", "HOOKS.LAN.", False, "80,443"),
        ("http://100.64.0.1/", "100.64.0.0/10", False, "80,443"),
        ("http://[fd00::5]/", "fd00::/8", False, "80,443"),
        ("http://[fd00::5]/", "[fd00::5]", False, "80,443"),
        ("http://[::ffff:10.0.0.7]/", "10.0.0.7", False, "80,443"),
        ("http://10.0.0.7:8080/", "10.0.0.7", False, "8080"),
        ("http://127.0.0.1:9000/", "", True, "*"),
        ("http://localhost/", "", True, "80,443"),
        ("http://[::ffff:127.0.0.1]/", "", True, "80,443"),
        ("http://127.0.0.1/", "127.0.0.0/8", False, "80,443"),
        ("http://127.0.0.1/", "10.0.0.0/8", True, "80,443"),  # loopback allowed, as asked
    ],
)
def test_allowed(url: str, hosts: str, loopback: bool, ports: str) -> None:
    check(url, hosts, loopback, ports)


@pytest.mark.parametrize(
    ("url", "hosts", "loopback", "reason"),
    [
        ("ftp://10.0.0.1/x", "", False, "http(s)"),
        ("http:///nohost", "", False, "http(s)"),
        ("http://host:notaport/", "", False, "malformed"),
        ("http://[::1", "", False, "malformed"),
        # Never, whatever the configuration says.
        ("http://169.254.169.254/latest/meta-data", "", False, "link-local"),
        ("http://169.254.169.254/", "169.254.0.0/16", True, "link-local"),
        ("http://[fe80::1]/", "", False, "link-local"),
        ("http://[::ffff:169.254.169.254]/", "", False, "link-local"),
        ("http://224.0.0.1/", "", False, "special"),
        ("http://[ff02::1]/", "", False, "special"),
        ("http://0.0.0.0/", "0.0.0.0/0", True, "special"),
        ("http://0.1.2.3/", "", True, "special"),
        ("http://[::]/", "", True, "special"),
        ("http://240.0.0.1/", "", False, "special"),
        ("http://255.255.255.255/", "", False, "special"),
        ("http://[64:ff9b::a00:1]/", "", False, "special|private"),  # NAT64 of 10.0.0.1
        # Loopback only when allowed or listed.
        ("http://127.0.0.1/", "", False, "loopback"),
        ("http://127.8.9.10/", "", False, "loopback"),
        ("http://[::1]/", "", False, "loopback"),
        ("http://[::ffff:127.0.0.1]/", "", False, "loopback"),
        ("http://localhost/", "", False, "loopback"),
        ("http://127.0.0.1/", "hooks.lan", False, "loopback"),
        # Private ranges only when listed.
        ("http://10.1.2.3/", "", False, "private"),
        ("http://172.16.0.1/", "", False, "private"),
        ("http://192.168.0.10/", "", False, "private"),
        ("http://100.64.0.1/", "", False, "private"),  # CGNAT
        ("http://100.127.255.254/", "", False, "private"),
        ("http://[fd12::1]/", "", False, "private"),  # ULA
        ("http://[fc00::1]/", "", False, "private"),
        ("http://[::ffff:10.0.0.1]/", "", False, "private"),
        ("http://[::ffff:100.64.1.1]/", "", False, "private"),
        ("http://[::ffff:192.168.1.1]/", "", True, "private"),
        ("http://[2002:a00:1::]/", "", False, "private"),  # 6to4 of 10.0.0.1
        ("http://hooks.lan/", "", False, "private"),
        ("http://mapped.example/", "", False, "private"),
        ("http://mixed.example/", "", False, "private"),  # every address is checked
        ("http://10.0.1.7/", "10.0.0.0/24", False, "private"),
        # Only what CV_CALLBACK_HOSTS names, once it is set.
        ("http://8.8.8.8/", "10.0.0.0/8", False, "not in CV_CALLBACK_HOSTS"),
        ("http://hooks.example/", "hooks.lan", False, "not in CV_CALLBACK_HOSTS"),
        # Names that do not resolve.
        ("http://nowhere.example/", "", False, "does not resolve"),
        ("http://empty.example/", "", False, "does not resolve"),
    ],
)
def test_refused(url: str, hosts: str, loopback: bool, reason: str) -> None:
    with pytest.raises(CallbackRefused, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check(url, hosts, loopback)


@pytest.mark.parametrize(
    ("url", "ports", "refused"),
    [
        ("http://8.8.8.8/", "80,443", False),
        ("https://8.8.8.8/", "80,443", False),
        ("http://8.8.8.8:443/", "80,443", False),
        ("http://8.8.8.8:8080/", "80,443", True),
        ("http://hooks.example:6379/", "80,443", True),
        ("https://8.8.8.8/", "80", True),
        ("http://8.8.8.8:22/", "80, 22", False),
        ("http://8.8.8.8:65535/", " * ", False),
    ],
)
def test_ports(url: str, ports: str, refused: bool) -> None:
    if refused:
        with pytest.raises(CallbackRefused, match=r"port \d+ is not allowed"):
            check(url, ports=ports)
    else:
        check(url, ports=ports)


@pytest.mark.parametrize("ports", ["0", "65536", "http", "80;443"])
def test_a_port_list_that_is_not_one_is_a_configuration_error(ports: str) -> None:
    with pytest.raises(ValueError, match=r"CV_CALLBACK_PORTS|invalid literal") as caught:
        CallbackPolicy.parse(ports=ports)
    assert not isinstance(caught.value, CallbackRefused)


@pytest.mark.parametrize(
    "url", ["http://mixed.example/", "http://localhost/", "http://mapped.example/"]
)
def test_refusals_name_no_resolved_address(url: str) -> None:
    with pytest.raises(CallbackRefused) as caught:
        check(url)
    for address in DNS[url.split("/")[2]]:
        assert address not in str(caught.value)


def test_the_policy_from_settings() -> None:
    policy = CallbackPolicy.from_settings(
        Settings(callback_hosts="hooks.lan, 10.0.0.0/8", callback_allow_loopback=True)
    )
    assert policy.hosts == {"hooks.lan"} and [str(n) for n in policy.networks] == ["10.0.0.0/8"]
    assert policy.allow_loopback and policy.ports == {80, 443}
    assert CallbackPolicy.from_settings(Settings(callback_ports="*")).ports is None
    assert CallbackPolicy.from_settings(Settings()) == CallbackPolicy()


# --- the client -----------------------------------------------------------------------

LOCAL = CallbackPolicy.parse(allow_loopback=True, ports="*")


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1: ``answers[path]`` is (status, headers, body size)."""

    answers: dict[str, tuple[int, dict[str, str], int]] = field(default_factory=dict)
    delay: float = 0.0
    calls: list[dict[str, Any]] = field(default_factory=list)
    body_bytes_sent: int = 0
    port: int = 0


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
            time.sleep(state.delay)
            status, headers, size = state.answers.get(self.path, (204, {}, 0))
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(size)}.items():
                self.send_header(name, value)
            self.end_headers()
            chunk = b"x" * 65536
            try:
                while state.body_bytes_sent < size:
                    self.wfile.write(chunk)
                    state.body_bytes_sent += len(chunk)
            except OSError:
                pass  # the client stopped reading and closed

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


class ChangingResolver:
    """Answers ``answers[0]`` first, then ``answers[1]`` on every later call."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


def post(url: str, policy: CallbackPolicy = LOCAL, **client: Any) -> int:
    with callback_client(policy, **client) as c:
        return post_callback(c, url, b'{"id": "j1"}', {"Content-Type": "application/json"})


def test_the_post_arrives_with_its_body_and_headers(receiver: Receiver) -> None:
    assert post(f"http://127.0.0.1:{receiver.port}/hook?x=1") == 204
    [call] = receiver.calls
    assert call["path"] == "/hook?x=1" and call["body"] == b'{"id": "j1"}'
    assert call["headers"]["Content-Type"] == "application/json"


def test_connects_to_the_address_checked_not_to_a_second_answer(receiver: Receiver) -> None:
    resolver = ChangingResolver(["127.0.0.1"], ["10.9.9.9"])
    assert post(f"http://hooks.test:{receiver.port}/hook", resolver=resolver) == 204
    assert resolver.calls == ["hooks.test"]  # resolved once
    assert receiver.calls[0]["headers"]["Host"] == f"hooks.test:{receiver.port}"


def test_a_refused_first_answer_is_not_rescued_by_a_second(receiver: Receiver) -> None:
    resolver = ChangingResolver(["10.9.9.9"], ["127.0.0.1"])
    with pytest.raises(CallbackRefused, match="private"):
        post(f"http://hooks.test:{receiver.port}/hook", resolver=resolver)
    assert receiver.calls == [] and resolver.calls == ["hooks.test"]


def test_a_port_outside_the_policy_is_refused_at_the_connection(receiver: Receiver) -> None:
    with pytest.raises(CallbackRefused, match="port"):
        post(f"http://127.0.0.1:{receiver.port}/", CallbackPolicy.parse(allow_loopback=True))
    assert receiver.calls == []


@dataclass
class FakeStream(httpcore.NetworkStream):
    tls_names: list[str | None]

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: Any = None
    ) -> httpcore.NetworkStream:
        self.tls_names.append(server_hostname)
        raise httpcore.ConnectError("no TLS in this test")

    def close(self) -> None:
        pass


@dataclass
class FakeBackend(httpcore.NetworkBackend):
    """Records where it is asked to connect; ``unreachable`` addresses fail."""

    unreachable: set[str] = field(default_factory=set)
    connects: list[tuple[str, int]] = field(default_factory=list)
    tls_names: list[str | None] = field(default_factory=list)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        self.connects.append((host, port))
        if host in self.unreachable:
            raise httpcore.ConnectError("unreachable")
        return FakeStream(self.tls_names)


def test_tls_checks_the_host_name_while_the_socket_goes_to_the_ip() -> None:
    backend = FakeBackend()
    with pytest.raises(httpx.ConnectError):
        post("https://hooks.example/hook", CallbackPolicy(), resolver=fake_resolve, backend=backend)
    assert backend.connects == [("93.184.215.14", 443)]
    assert backend.tls_names == ["hooks.example"]


def test_the_next_checked_address_is_tried_when_one_is_unreachable() -> None:
    addresses = [f"93.184.215.{i}" for i in range(1, 6)]
    backend = FakeBackend(unreachable=set(addresses[:1]))
    with pytest.raises(httpx.ConnectError):  # the fake's TLS always fails
        post(
            "https://many.example/",
            CallbackPolicy(),
            resolver=lambda h, p: addresses,
            backend=backend,
        )
    assert backend.connects == [(addresses[0], 443), (addresses[1], 443)]
    backend = FakeBackend(unreachable=set(addresses))
    with pytest.raises(httpx.ConnectError, match="unreachable"):
        post(
            "https://many.example/",
            CallbackPolicy(),
            resolver=lambda h, p: addresses,
            backend=backend,
        )
    assert [a for a, _ in backend.connects] == addresses[:MAX_ADDRESSES_TRIED]


def test_proxies_in_the_environment_are_ignored(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = "http://127.0.0.1:9"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert post(f"http://127.0.0.1:{receiver.port}/hook") == 204
    assert [c["path"] for c in receiver.calls] == ["/hook"]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_not_followed(receiver: Receiver, status: int) -> None:
    receiver.answers["/hook"] = (status, {"Location": "/elsewhere"}, 0)
    assert post(f"http://127.0.0.1:{receiver.port}/hook") == status
    assert [c["path"] for c in receiver.calls] == ["/hook"]


def test_a_large_answer_is_not_read_in_full(receiver: Receiver) -> None:
    size = 256 * 1024 * 1024
    receiver.answers["/hook"] = (200, {}, size)
    started = time.monotonic()
    assert post(f"http://127.0.0.1:{receiver.port}/hook") == 200
    assert time.monotonic() - started < 10
    assert receiver.body_bytes_sent < size


def test_at_most_the_cap_is_pulled_from_the_answer() -> None:
    pulled = 0

    class Endless(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            nonlocal pulled
            while True:
                pulled += 4096
                yield b"x" * 4096

    client = httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, stream=Endless()))
    )
    assert post_callback(client, "http://hooks.example/", b"{}", {}) == 200
    assert MAX_RESPONSE_BYTES <= pulled < MAX_RESPONSE_BYTES + 4096


def test_a_receiver_that_does_not_answer_times_out(receiver: Receiver) -> None:
    receiver.delay = 2
    timeout = httpx.Timeout(connect=1, read=0.2, write=1, pool=1)
    with pytest.raises(httpx.ReadTimeout):
        post(f"http://127.0.0.1:{receiver.port}/hook", timeout=timeout)


def test_a_closed_port_is_a_connect_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        post(f"http://127.0.0.1:{port}/hook")


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://[::1/", CallbackRefused),
        ("http://host:notaport/", CallbackRefused),
        ("http://a\x00b/", CallbackRefused),
        ("http://xn--a.com/", CallbackRefused),
        ("http://exa mple.com/", CallbackRefused),
        ("http:///nohost", httpx.UnsupportedProtocol),
        ("ftp://8.8.8.8/", httpx.UnsupportedProtocol),
    ],
)
def test_a_url_that_cannot_be_sent_fails_as_refused_or_an_http_error(
    url: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        post(url, CallbackPolicy(), resolver=fake_resolve)
