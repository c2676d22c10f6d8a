"""Where a push may go: endpoint URLs and the addresses behind them.

A push subscription names a URL that the server will later POST to, so a
subscription must never become a way to make the server call into a private
network. Without ``CHIME_PUSH_ALLOW_PRIVATE`` an endpoint must be ``https`` on
a public address: checked when the subscription is saved (the URL, and what
its host resolves to then) and again for every send, at connect time, through
``GuardedResolver``: the connection goes only to addresses that passed the
check, so a name that changes its answer (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_ENDPOINT_CHARS = 2_048
RESOLVE_TIMEOUT_S = 5.0
DEFAULT_PORTS = {"https": 443, "http": 80}

# IPv6 ranges that carry an IPv4 address in their last 32 bits and reach it
# through a translator (RFC 6052 NAT64, well-known and local-use prefixes).
_NAT64_PREFIXES = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


class RefusedEndpoint(ValueError):
    """An endpoint that pushes must not go to; the message says why."""


class BlockedAddress(OSError):
    """Raised at connect time: the endpoint's host resolved to a non-public address."""


@dataclass(frozen=True)
class Endpoint:
    url: str
    scheme: str
    host: str
    port: int

    @property
    def origin(self) -> str:
        """``scheme://host[:port]``, the default port left out (the VAPID ``aud``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == DEFAULT_PORTS[self.scheme]:
            return f"{self.scheme}://{host}"
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def literal_address(self) -> IPAddress | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


def is_public(address: IPAddress) -> bool:
    """True only for globally routable unicast addresses.

    IPv6 forms that wrap an IPv4 address (mapped, 6to4, Teredo, NAT64) are
    judged by the address they wrap as well, so ``::ffff:127.0.0.1`` is loopback.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # the connection goes to the IPv4 address itself
            return is_public(address.ipv4_mapped)
        embedded = _embedded_ipv4(address)
        if embedded is not None and not is_public(embedded):
            return False
    return (address.is_global and not address.is_multicast and not address.is_reserved
            and not address.is_unspecified and not address.is_loopback
            and not address.is_link_local and not address.is_private)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address
    if any(address in prefix for prefix in _NAT64_PREFIXES):
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if int(address) >> 32 == 0:  # IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks)
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def parse_endpoint(url: object, *, allow_private: bool) -> Endpoint:
    """Check an endpoint URL's shape (not yet what its name resolves to).

    Raises ``RefusedEndpoint``: not a string, too long, not ``https`` (``http``
    too with ``allow_private``), credentials in the URL, no host, a bad port,
    or a literal address that is not public (without ``allow_private``).
    """
    if not isinstance(url, str) or not url:
        raise RefusedEndpoint("endpoint must be a URL string.")
    if len(url) > MAX_ENDPOINT_CHARS:
        raise RefusedEndpoint(f"endpoint must be at most {MAX_ENDPOINT_CHARS} characters.")
    if not url.isascii() or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise RefusedEndpoint("endpoint must be a plain ASCII URL without spaces.")
    endpoint = _split(url)
    allowed_schemes = ("https", "http") if allow_private else ("https",)
    if endpoint.scheme not in allowed_schemes:
        raise RefusedEndpoint("endpoint must be an https URL.")
    literal = endpoint.literal_address
    if literal is not None and not allow_private and not is_public(literal):
        raise RefusedEndpoint("endpoint must be on a public address.")
    return endpoint


def _split(url: str) -> Endpoint:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RefusedEndpoint("endpoint is not a valid URL.") from None
    scheme = parts.scheme.lower()
    if parts.username is not None or parts.password is not None:
        raise RefusedEndpoint("endpoint must not carry credentials.")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise RefusedEndpoint("endpoint must name a host.")
    if scheme not in DEFAULT_PORTS:
        raise RefusedEndpoint("endpoint must be an https URL.")
    return Endpoint(url, scheme, host, port or DEFAULT_PORTS[scheme])


async def resolve_public(endpoint: Endpoint, timeout_s: float = RESOLVE_TIMEOUT_S) -> None:
    """Resolve a named host (off the event loop) and refuse it unless every address is public."""
    if endpoint.literal_address is not None:
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM), timeout_s)
    except (TimeoutError, OSError, UnicodeError):
        raise RefusedEndpoint("endpoint's host could not be resolved.") from None
    addresses = [_address(info[4]) for info in infos]
    if not addresses or not all(is_public(address) for address in addresses):
        raise RefusedEndpoint("endpoint must be on a public address.")


def _address(sockaddr: tuple[Any, ...]) -> IPAddress:
    # A scoped IPv6 address comes back as "fe80::1%eth0".
    return ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])


class GuardedResolver(ThreadedResolver):
    """aiohttp's threaded resolver, refusing any name that resolves to a non-public address.

    aiohttp does not call the resolver for literal addresses: those are
    checked by ``parse_endpoint`` before every send.
    """

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        results = await super().resolve(host, port, family)
        if not results or not all(is_public(ipaddress.ip_address(result["host"].split("%", 1)[0]))
                                  for result in results):
            raise BlockedAddress(f"{host} resolves to an address that is not public")
        return results
