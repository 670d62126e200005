"""Which callback URLs the service will POST to.

Callbacks go out from the workers, inside the network the service protects, so
an address is checked when the job is submitted (400) and again, after a fresh
DNS look-up, right before each POST:

- http or https only, with a host;
- never link-local (cloud metadata at 169.254.169.254), multicast, unspecified
  or reserved addresses;
- loopback only when ``CV_CALLBACK_ALLOW_LOOPBACK`` is set (it reaches the
  worker host's own services);
- when ``CV_CALLBACK_HOSTS`` is set (host names and CIDR ranges, comma-separated),
  only those.

Private ranges are allowed by default: on-prem receivers live there.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class CallbackRefused(ValueError):
    """The URL is not one the service posts to; ``str()`` says why."""


def check_callback_url(url: str, allowed_hosts: str = "", allow_loopback: bool = False) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackRefused(f"callback_url is malformed: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused("callback_url must be an http(s) URL with a host")
    host = parts.hostname
    try:
        infos = socket.getaddrinfo(host, port or 80, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise CallbackRefused(f"callback_url host {host!r} does not resolve") from exc
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    allowed = [entry.strip() for entry in allowed_hosts.split(",") if entry.strip()]
    for address in addresses:
        if address.is_link_local or address.is_multicast or address.is_unspecified:
            raise CallbackRefused(f"callback_url host {host!r} is a link-local or special address")
        if address.is_loopback and not allow_loopback:
            raise CallbackRefused(
                f"callback_url host {host!r} is loopback (set CV_CALLBACK_ALLOW_LOOPBACK=1 "
                "to allow it)"
            )
        if address.is_reserved:
            raise CallbackRefused(f"callback_url host {host!r} is a reserved address")
        if allowed and not _listed(host, address, allowed):
            raise CallbackRefused(f"callback_url host {host!r} is not in CV_CALLBACK_HOSTS")


def _listed(
    host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address, allowed: list[str]
) -> bool:
    for entry in allowed:
        if entry.lower() == host.lower():
            return True
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False
