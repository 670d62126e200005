"""Which callback addresses the service posts to."""

from __future__ import annotations

import pytest

from common.callbacks import CallbackRefused, check_callback_url


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/hook",
        "https://192.168.0.10:8443/x?y=1",
        "http://172.16.0.1/",
        "http://8.8.8.8/",
    ],
)
def test_private_and_public_receivers_are_allowed(url: str) -> None:
    check_callback_url(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://10.0.0.1/x", "http(s)"),
        ("http:///nohost", "http(s)"),
        ("http://169.254.169.254/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://224.0.0.1/", "link-local or special"),
        ("http://127.0.0.1:6379/", "loopback"),
        ("http://localhost/", "loopback"),
        ("http://240.0.0.1/", "reserved"),
        ("http://host:notaport/", "malformed"),
        ("http://no-such-host.invalid/", "does not resolve"),
    ],
)
def test_refused(url: str, reason: str) -> None:
    with pytest.raises(CallbackRefused, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_callback_url(url)


def test_loopback_when_allowed_and_the_allow_list() -> None:
    check_callback_url("http://127.0.0.1:9000/", allow_loopback=True)
    check_callback_url("http://10.0.0.7/", allowed_hosts="10.0.0.0/24, hooks.example")
    with pytest.raises(CallbackRefused, match="not in CV_CALLBACK_HOSTS"):
        check_callback_url("http://10.0.1.7/", allowed_hosts="10.0.0.0/24")
