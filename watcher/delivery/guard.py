"""The SSRF address guard for callbacks (SPEC §13): which addresses a callback may reach, and where.

Three places use it. At registration, `AddressGuard.check_url` refuses a bad scheme and a literal IP in a
refused range, in every spelling a resolver or browser would accept. At delivery, `guarded_connector`
builds an aiohttp connector whose resolver drops refused addresses (so DNS rebinding finds nothing to
connect to) and whose socket factory checks the address of every socket it opens, which also covers the
IP literals that aiohttp never hands to its resolver. A refusal raises `BlockedAddress`; `find_blocked`
digs it out of the aiohttp error so the delivery can be dead with reason `blocked_address`.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

import aiohttp
import yarl
from aiohttp import AddrInfoType, SocketFactoryType
from aiohttp.abc import AbstractResolver, ResolveResult

from watcher.errors import WatcherError
from watcher.masking import MASK as MASK  # re-exported: the guard's callers mask as the API does
from watcher.masking import mask_url as mask_url

IPAddress = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


# Ranges the `ipaddress` properties leave out, each with the reason it is named here:
# - 100.64.0.0/10 is neither private nor reserved, only "not global"; named here for a clearer reason.
_SHARED_V4 = IPv4Network("100.64.0.0/10")
# - 192.0.0.0/24 (IETF protocol assignments): 3.11.7 lists only 192.0.0.0/29 and 192.0.0.170/31 as private,
#   so e.g. the dummy address 192.0.0.8 would pass. The whole /24 is refused, its two anycast services too.
_IETF_V4 = IPv4Network("192.0.0.0/24")
# - An address has no is_broadcast; 255.255.255.255 is inside is_reserved (240.0.0.0/4), named for clarity.
_BROADCAST_V4 = IPv4Address("255.255.255.255")
# - The NAT64 well-known prefix (RFC 6052) lies inside ::/8, which is_reserved refuses as a whole, yet it is
#   how IPv6-only hosts reach IPv4 ones; its verdict is that of the IPv4 address in its last 32 bits.
_NAT64_V6 = IPv6Network("64:ff9b::/96")
# - The local-use NAT64 prefix (RFC 8215) is global for Python 3.11.7; later releases disagree. Refused.
_NAT64_LOCAL_V6 = IPv6Network("64:ff9b:1::/48")
# - IPv4-compatible addresses (RFC 4291, deprecated): ::a.b.c.d; :: and ::1 are not of this form.
_COMPATIBLE_V6 = IPv6Network("::/96")
# - 3fff::/20, the second IPv6 documentation prefix (RFC 9637), is global for Python 3.11.7.
_DOCUMENTATION_V6 = IPv6Network("3fff::/20")


class BlockedAddress(WatcherError, OSError):
    """A callback connection would reach a refused address; the delivery is dead (`blocked_address`).

    An OSError so that aiohttp wraps it like any connection failure (`ClientConnectorError.os_error`).
    """

    def __init__(self, address: str, reason: str, hostname: str | None = None) -> None:
        where = f"{hostname} resolves to {address}" if hostname and hostname != address else address
        super().__init__(errno.EACCES, f"{where}, which is {reason}")
        self.address = address
        self.reason = reason
        self.hostname = hostname


class CallbackUrlError(WatcherError, ValueError):
    """A callback URL refused at registration; the message is one line meant for `callback.url`."""


# -- addresses ----------------------------------------------------------------------------------------------


def parse_networks(values: Iterable[str | Network]) -> tuple[Network, ...]:
    """`allow_networks` as networks; ValueError names an entry that is not a CIDR without host bits."""
    networks: list[Network] = []
    for value in values:
        try:
            networks.append(value if isinstance(value, IPv4Network | IPv6Network) else ip_network(value))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a network in CIDR form ({exc})") from None
    return tuple(networks)


def parse_address(text: str | IPAddress) -> IPAddress:
    """An address in its canonical form, without an IPv6 zone (which says where, not what, it is)."""
    if isinstance(text, IPv4Address | IPv6Address):
        return IPv6Address(int(text)) if isinstance(text, IPv6Address) else text
    return ip_address(text.strip("[]").split("%", 1)[0])


def _embedded_v4(address: IPv6Address) -> list[tuple[str, IPv4Address]]:
    if address.ipv4_mapped is not None:
        return [("IPv4-mapped form", address.ipv4_mapped)]
    if address in _NAT64_V6:
        return [("NAT64 form", IPv4Address(int(address) & 0xFFFFFFFF))]
    if address.sixtofour is not None:
        return [("6to4 form", address.sixtofour)]
    if address.teredo is not None:
        server, client = address.teredo
        return [("Teredo server", server), ("Teredo client", client)]
    if address in _COMPATIBLE_V6 and int(address) > 1:
        return [("IPv4-compatible form", IPv4Address(int(address)))]
    return []


def _v4_reason(a: IPv4Address) -> str | None:
    checks = (
        (a.is_unspecified, "unspecified"),
        (a == _BROADCAST_V4, "broadcast"),
        (a.is_loopback, "loopback"),
        (a.is_link_local, "link-local"),  # 169.254.0.0/16, the cloud metadata address among them
        # 3.11 calls 224.0.0.0/4 global, so multicast needs its own check.
        (a.is_multicast, "multicast"),
        (a in _SHARED_V4, "shared address space (CGNAT)"),
        (a.is_reserved, "reserved"),
        # RFC 1918, 0.0.0.0/8, 192.0.0.0/24, documentation (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24),
        # benchmarking (198.18.0.0/15): Python 3.11's is_private list holds them all.
        (a.is_private, "private or special-purpose"),
        (a in _IETF_V4, "an IETF protocol assignment (192.0.0.0/24)"),
        (not a.is_global, "not globally reachable"),
    )
    return next((reason for refused, reason in checks if refused), None)


def _v6_reason(a: IPv6Address, allow: tuple[Network, ...]) -> str | None:
    embedded = _embedded_v4(a)
    for form, v4 in embedded:
        inner = refusal_reason(v4, allow)
        if inner is not None:
            return f"the {form} of {v4}, which is {inner}"
    if a in _NAT64_V6:
        return None
    if embedded and (a.ipv4_mapped is not None or a in _COMPATIBLE_V6):
        # Python releases disagree on whether a mapped address is judged by its IPv4 one: refused on all,
        # so a callback names the IPv4 address itself and the verdict does not depend on the interpreter.
        return "an IPv4-mapped or IPv4-compatible address; write the IPv4 address itself"
    checks = (
        (a.is_unspecified, "unspecified"),
        (a.is_loopback, "loopback"),
        (a.is_link_local, "link-local"),  # fe80::/10
        (a.is_site_local, "site-local"),  # fec0::/10, deprecated; 3.11 calls it global
        (a.is_multicast, "multicast"),  # 3.11 calls ff00::/8 global
        (a in _NAT64_LOCAL_V6, "local-use NAT64 (RFC 8215)"),
        (a in _DOCUMENTATION_V6, "documentation (3fff::/20)"),
        # fc00::/7 (unique-local), 2001:db8::/32 (documentation), 2001::/23 (Teredo, benchmarking, ORCHID),
        # 100::/64 (discard): all in Python 3.11's is_private list.
        (a.is_private, "private or special-purpose"),
        (a.is_reserved, "reserved"),
        (not a.is_global, "not globally reachable"),
    )
    return next((reason for refused, reason in checks if refused), None)


def refusal_reason(address: str | IPAddress, allow_networks: Iterable[Network] = ()) -> str | None:
    """Why a callback may not connect to `address` (e.g. "loopback"), or None when it may.

    An address inside `allow_networks` is always allowed; anything that does not parse is refused.
    """
    allow = tuple(allow_networks)
    try:
        a = parse_address(address)
    except ValueError:
        return "not an IP address"
    if any(a.version == net.version and a in net for net in allow):
        return None
    return _v4_reason(a) if isinstance(a, IPv4Address) else _v6_reason(a, allow)


def _ipv4_number(part: str) -> int | None:
    radix = 10
    if part[:2].lower() == "0x":
        radix, part = 16, part[2:]
    elif len(part) > 1 and part[0] == "0":
        radix, part = 8, part[1:]
    if not part:
        return 0
    try:
        return int(part, radix) if part.isascii() and part.isalnum() else None
    except ValueError:
        return None


def _ends_in_number(labels: list[str]) -> bool:
    last = labels[-1]
    if last.isascii() and last.isdigit():
        return True
    return last[:2].lower() == "0x" and _ipv4_number(last) is not None


def parse_ipv4(host: str) -> IPv4Address | None:
    """The IPv4 address a host names in any legacy spelling (127.1, 0x7f.1, 0177.0.0.1, 2130706433), or None.

    This is the URL Standard's IPv4 parser, the forms inet_aton(3) and so getaddrinfo(3) accept. A host
    whose last label is a number but which is no valid address raises ValueError: no hostname ends so.
    """
    labels = host.rstrip(".").split(".")
    if not labels[-1] or not _ends_in_number(labels):
        return None
    numbers = [_ipv4_number(label) if label else None for label in labels]
    if len(numbers) > 4 or any(n is None for n in numbers):
        raise ValueError(f"{host} ends in a number but is not an IPv4 address")
    values = [n for n in numbers if n is not None]
    *head, last = values
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(values)):
        raise ValueError(f"{host} ends in a number but is not an IPv4 address")
    return IPv4Address(sum(n << (8 * (3 - i)) for i, n in enumerate(head)) + last)


def literal_address(host: str) -> IPAddress | None:
    """The IP address `host` spells, brackets, zone and trailing dots allowed; None for a hostname."""
    if not host.isascii():
        # The same UTS 46 mapping yarl (and so aiohttp) applies: fullwidth digits and dots become ASCII.
        host = yarl.URL.build(scheme="http", host=host).raw_host or host
    if ":" in host:
        return parse_address(host)
    return parse_ipv4(host)


# -- URLs ---------------------------------------------------------------------------------------------------

_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


def check_url(url: str, *, require_https: bool = True, allow_networks: Iterable[Network] = ()) -> yarl.URL:
    """The callback URL as aiohttp will read it, or CallbackUrlError saying what is wrong with it.

    Userinfo is allowed (it becomes Basic auth and is masked in answers). A hostname is not resolved here:
    what it resolves to is checked on every connection.
    """
    try:
        parsed = yarl.URL(url)
        port = parsed.port
    except (TypeError, ValueError):
        # yarl's message may quote the URL, whose userinfo and query can be secrets
        raise CallbackUrlError("is not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.absolute:
        raise CallbackUrlError("must be an absolute https URL (or http where require_https is off)")
    if require_https and parsed.scheme != "https":
        raise CallbackUrlError("must use https (callbacks.require_https is on)")
    host = parsed.raw_host or ""
    if not host:
        raise CallbackUrlError("has no host")
    if port == 0:
        raise CallbackUrlError("has port 0")
    try:
        address = literal_address(host)
    except ValueError as exc:
        raise CallbackUrlError(f"host {exc}") from None
    if address is None:
        if not set(host) <= _HOST_CHARS:
            # e.g. a percent-encoded host, which another client could decode into an address
            raise CallbackUrlError(f"host {host!r} is not a valid hostname")
        return parsed
    reason = refusal_reason(address, allow_networks)
    if reason is not None:
        raise CallbackUrlError(f"host {address} is {reason}; callbacks.allow_networks can allow it")
    return parsed


# -- enforcement at connection time -------------------------------------------------------------------------


@dataclass(frozen=True)
class AddressGuard:
    """The `[callbacks]` address policy; build a new one (and a new connector) when the config changes."""

    allow_networks: tuple[Network, ...] = ()
    require_https: bool = True

    @classmethod
    def from_config(cls, allow_networks: Iterable[str], require_https: bool = True) -> AddressGuard:
        """A guard from configuration values; ValueError names a bad `allow_networks` entry."""
        return cls(parse_networks(allow_networks), require_https)

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why `address` is refused, or None when a callback may connect to it."""
        return refusal_reason(address, self.allow_networks)

    def ensure(self, address: str, hostname: str | None = None) -> None:
        """Raise BlockedAddress unless a callback may connect to `address`."""
        reason = self.refusal(address)
        if reason is not None:
            raise BlockedAddress(address, reason, hostname)

    def check_url(self, url: str) -> yarl.URL:
        """Registration check of one callback URL (see `check_url`)."""
        return check_url(url, require_https=self.require_https, allow_networks=self.allow_networks)


class GuardedResolver(AbstractResolver):
    """Resolves through `inner` and keeps only the addresses the guard allows; none left is BlockedAddress.

    aiohttp caches what a resolver returns, so a refused address never enters its DNS cache either.
    """

    def __init__(self, guard: AddressGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        # getaddrinfo in a thread: what the system (and /etc/hosts) says; the caller closes its own `inner`.
        self._inner = inner if inner is not None else aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses of `host` a callback may connect to, at least one, or BlockedAddress."""
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._guard.refusal(r["host"]) is None]
        if not allowed and results:
            first = results[0]["host"]
            raise BlockedAddress(first, self._guard.refusal(first) or "refused", host)
        return allowed

    async def close(self) -> None:
        """Nothing of its own to close."""


def guarded_socket_factory(guard: AddressGuard, inner: SocketFactoryType | None = None) -> SocketFactoryType:
    """A TCPConnector `socket_factory` that refuses to open a socket to a refused address."""

    def factory(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        guard.ensure(sockaddr[0])
        return inner(addr_info) if inner is not None else socket.socket(family, type_, proto)

    return factory


def guarded_connector(
    guard: AddressGuard,
    *,
    resolver: AbstractResolver | None = None,
    socket_factory: SocketFactoryType | None = None,
    **kwargs: Any,
) -> aiohttp.TCPConnector:
    """A TCPConnector that only ever connects to addresses `guard` allows.

    Use it with `trust_env=False` and no proxy: through a proxy, the guard would see the proxy's address.
    """
    return aiohttp.TCPConnector(
        resolver=GuardedResolver(guard, resolver),
        socket_factory=guarded_socket_factory(guard, socket_factory),
        **kwargs,
    )


def find_blocked(exc: BaseException | None) -> BlockedAddress | None:
    """The BlockedAddress behind an aiohttp connection error, following causes and `os_error`."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, BlockedAddress):
            return exc
        seen.add(id(exc))
        os_error = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else None
        exc = os_error or exc.__cause__ or exc.__context__
    return None
