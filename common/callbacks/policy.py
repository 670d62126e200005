"""Where job callbacks may connect.

Callbacks go out from the workers, inside the network the service protects, so a
callback URL is checked when the job is submitted (a 400) and again by the socket
that delivers it (``common.callbacks.transport``). The policy (``CallbackPolicy``):

- http or https only, with a host, on one of ``CV_CALLBACK_PORTS`` (80 and 443
  unless set; ``*`` for any);
- never unspecified (0.0.0.0, which reaches the host itself), link-local (cloud
  metadata at 169.254.169.254), multicast, broadcast or reserved addresses;
- loopback when ``CV_CALLBACK_ALLOW_LOOPBACK`` is set or ``CV_CALLBACK_HOSTS``
  names it (it reaches the worker host's own services);
- private ranges (RFC 1918, CGNAT 100.64/10, IPv6 ULA fc00::/7 and every other
  range that is not globally reachable) only when ``CV_CALLBACK_HOSTS`` (host names
  and CIDR ranges, comma-separated) names them;
- when ``CV_CALLBACK_HOSTS`` is set, only what it names;
- IPv6 forms that carry an IPv4 address (``::ffff:10.0.0.1``, NAT64, 6to4) are
  judged by that IPv4 address too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from common.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# ``resolver(host, port)``: the addresses ``host`` resolves to, as text.
Resolver = Callable[[str, int], Sequence[str]]

DEFAULT_PORTS = "80,443"

_NEVER = tuple(ipaddress.ip_network(n) for n in ("0.0.0.0/8", "255.255.255.255/32"))
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class CallbackRefused(ValueError):
    """The URL is not one the service posts to; ``str()`` says why (never an address)."""


def resolve(host: str, port: int) -> list[str]:
    """The system resolver: every address of ``host``, in the order it gives them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


@dataclass(frozen=True)
class CallbackPolicy:
    """The addresses and ports callbacks may reach; build it with ``parse``."""

    hosts: frozenset[str] = frozenset()  # host names, lower case
    networks: tuple[IPNetwork, ...] = ()
    allow_loopback: bool = False
    ports: frozenset[int] | None = frozenset({80, 443})  # None: any port

    @classmethod
    def parse(
        cls, allowed_hosts: str = "", allow_loopback: bool = False, ports: str = DEFAULT_PORTS
    ) -> CallbackPolicy:
        """From the settings' text; a port that is not one raises ``ValueError``."""
        names, networks = set(), []
        for entry in (e.strip() for e in allowed_hosts.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry.lower().rstrip("."))
        port_set = None if ports.strip() == "*" else frozenset(_ports(ports))
        return cls(frozenset(names), tuple(networks), allow_loopback, port_set)

    @classmethod
    def from_settings(cls, settings: Settings) -> CallbackPolicy:
        return cls.parse(
            settings.callback_hosts, settings.callback_allow_loopback, settings.callback_ports
        )

    def check_url(self, url: str) -> tuple[str, int]:
        """The URL's host and port, if its form, scheme and port are allowed (no look-up)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise CallbackRefused("callback_url is malformed") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CallbackRefused("callback_url must be an http(s) URL with a host")
        port = port or (443 if parts.scheme == "https" else 80)
        self.check_port(port)
        return parts.hostname, port

    def check_port(self, port: int) -> None:
        if self.ports is not None and port not in self.ports:
            raise CallbackRefused(f"callback_url port {port} is not allowed (CV_CALLBACK_PORTS)")

    def vet(self, host: str, port: int, resolver: Resolver = resolve) -> list[IPAddress]:
        """Every address of ``host``, resolved once, if all of them are allowed."""
        self.check_port(port)
        literal = _ip(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = [ipaddress.ip_address(a) for a in resolver(host, port)]
            except (OSError, UnicodeError, ValueError) as exc:
                raise CallbackRefused(f"callback_url host {host!r} does not resolve") from exc
            if not addresses:
                raise CallbackRefused(f"callback_url host {host!r} does not resolve")
        for address in addresses:
            for face in _faces(address):
                self._check_address(host, face)
        return addresses

    def _check_address(self, host: str, address: IPAddress) -> None:
        listed = host.lower().rstrip(".") in self.hosts or any(
            address in network for network in self.networks
        )
        if address.is_loopback and not address.is_unspecified:  # ::1 is in reserved ::/8
            if not (self.allow_loopback or listed):
                raise CallbackRefused(
                    f"callback_url host {host!r} is loopback (set CV_CALLBACK_ALLOW_LOOPBACK=1 "
                    "to allow it)"
                )
        elif (
            address.is_unspecified
            or address.is_link_local
            or address.is_multicast
            or address.is_reserved
            or any(address in network for network in _NEVER)
        ):
            raise CallbackRefused(f"callback_url host {host!r} is a link-local or special address")
        elif not address.is_global:
            if not listed:
                raise CallbackRefused(
                    f"callback_url host {host!r} is a private address (not in CV_CALLBACK_HOSTS)"
                )
        elif (self.hosts or self.networks) and not listed:
            raise CallbackRefused(f"callback_url host {host!r} is not in CV_CALLBACK_HOSTS")


def check_callback_url(
    url: str,
    allowed_hosts: str = "",
    allow_loopback: bool = False,
    allowed_ports: str = DEFAULT_PORTS,
    resolver: Resolver = resolve,
) -> None:
    """Refuse (``CallbackRefused``) a URL the policy does not allow; used at submission."""
    policy = CallbackPolicy.parse(allowed_hosts, allow_loopback, allowed_ports)
    host, port = policy.check_url(url)
    policy.vet(host, port, resolver)


def _ports(text: str) -> Iterator[int]:
    for entry in (e.strip() for e in text.split(",")):
        if entry:
            port = int(entry)
            if not 0 < port < 65536:
                raise ValueError(f"CV_CALLBACK_PORTS: {entry} is not a port")
            yield port


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def _faces(address: IPAddress) -> list[IPAddress]:
    """The address, and the IPv4 address an IPv6 form carries (mapped, NAT64, 6to4)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return [address]
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _NAT64:
        return [address, ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    if address.sixtofour is not None:
        return [address, address.sixtofour]
    return [address]
