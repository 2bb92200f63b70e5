"""SSRF guard for webhook callback URLs.

A callback URL is checked twice: at submit time (:func:`check_callback_url`, a forbidden host is a 422) and at
send time, where the check must hold for the address the socket actually connects to. Checking a name and then
letting the HTTP client resolve it again opens a DNS-rebinding window, so at send time the check *is* the
resolution: :func:`resolve_checked` resolves once, refuses if any address is forbidden, and returns exactly the
addresses it checked, which the webhook transport (:mod:`delivery.http11`) connects to. IP literals, in every
spelling a client library or resolver accepts, are checked without DNS (:func:`check_literal`).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeAlias

from yarl import URL

from delivery.errors import ForbiddenAddress, InvalidCallbackUrl

__all__ = [
    "MAX_URL_LENGTH",
    "CallbackTarget",
    "IPAddress",
    "Resolve",
    "check_callback_url",
    "check_literal",
    "is_forbidden",
    "literal_ip",
    "parse_callback_url",
    "resolve_checked",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
# ``async (host, port) -> addresses``: the DNS step, injectable so tests never touch the network.
Resolve: TypeAlias = Callable[[str, int], Awaitable[list[str]]]

# Longer URLs are refused outright; 2048 is the common client and CDN limit.
MAX_URL_LENGTH = 2048

_SCHEMES = frozenset({"http", "https"})
# After IDNA encoding (yarl's raw_host) a resolvable name is ASCII letters, digits, hyphens, dots and, in the
# wild, underscores. Anything else is either garbage or a trick aimed at a parser other than ours.
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")
MAX_HOST_NAME_CHARS = 253
MAX_LABEL_CHARS = 63
# One part of a BSD inet_aton address: hex (0x, possibly with no digits), octal (leading 0) or decimal. Spelled
# out with ASCII classes because int() also accepts underscores, signs and non-ASCII digits.
_INET_ATON_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")
# Characters that urlsplit, yarl and WHATWG parsers each strip or reinterpret differently.
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Not left to is_global alone: its tables changed between 3.11 patch releases, and it calls multicast global.
_FORBIDDEN_V4 = (
    _V4("0.0.0.0/8"),  # "this network"
    _V4("10.0.0.0/8"),
    _V4("100.64.0.0/10"),  # carrier-grade NAT
    _V4("127.0.0.0/8"),
    _V4("169.254.0.0/16"),  # link-local, including the 169.254.169.254 metadata service
    _V4("172.16.0.0/12"),
    _V4("192.0.0.0/24"),  # IETF protocol assignments
    _V4("192.0.2.0/24"),  # TEST-NET-1
    _V4("192.88.99.0/24"),  # deprecated 6to4 relay anycast
    _V4("192.168.0.0/16"),
    _V4("198.18.0.0/15"),  # benchmarking
    _V4("198.51.100.0/24"),  # TEST-NET-2
    _V4("203.0.113.0/24"),  # TEST-NET-3
    _V4("224.0.0.0/4"),  # multicast
    _V4("240.0.0.0/4"),  # reserved, and 255.255.255.255 broadcast
)

# Only 2000::/3 is global unicast; everything else in IPv6 is local, special or unassigned.
_GLOBAL_UNICAST_V6 = _V6("2000::/3")
_FORBIDDEN_V6 = (
    _V6("2001::/23"),  # IETF protocol assignments, including Teredo 2001::/32 and benchmarking 2001:2::/48
    _V6("2001:db8::/32"),  # documentation
    _V6("3fff::/20"),  # documentation (RFC 9637)
)
_V4_MAPPED = _V6("::ffff:0:0/96")
_V4_COMPATIBLE = _V6("::/96")  # deprecated; includes :: and ::1
_NAT64 = _V6("64:ff9b::/96")  # well-known prefix: the gateway connects to the embedded IPv4
_SIX_TO_FOUR = _V6("2002::/16")
_AWS_METADATA_V6 = ipaddress.IPv6Address("fd00:ec2::254")  # inside fc00::/7 already; named for the reader


@dataclass(frozen=True, slots=True)
class CallbackTarget:
    """Where a callback URL points.

    Attributes:
        scheme: ``"http"`` or ``"https"``.
        host: The host as the HTTP client will see it: lower-case, IDNA-encoded, IPv6 without brackets.
        port: The explicit port, else the scheme's default.
    """

    scheme: str
    host: str
    port: int


# Pure functions of their text, called for every submit and every webhook with the same few URLs: remembered.
@functools.lru_cache(maxsize=1024)
def parse_callback_url(url: str) -> CallbackTarget:
    """Parse a callback URL, accepting only absolute http(s) URLs with a host.

    Parsed with yarl. At send time the transport checks again the host it parsed itself, as it resolves it, so a
    disagreement between parsers cannot reach an unchecked address.
    Userinfo (``user:pass@``) is refused: it serves no purpose for signed webhooks and is the classic way to
    make two URL parsers disagree about the host.

    Args:
        url: The URL as submitted.

    Returns:
        The scheme, host and port the URL points at.

    Raises:
        InvalidCallbackUrl: The URL is not one Relay will deliver to; the message says why.
    """
    if len(url) > MAX_URL_LENGTH:
        raise InvalidCallbackUrl(f"callback URL is longer than {MAX_URL_LENGTH} characters")
    if _UNSAFE_URL_CHARS.search(url):
        raise InvalidCallbackUrl("callback URL contains whitespace, control characters or a backslash")
    try:
        parsed = URL(url)
        scheme = parsed.scheme
        host = parsed.raw_host
        port = parsed.port
        has_userinfo = parsed.raw_user is not None or parsed.raw_password is not None
    except (ValueError, UnicodeError) as exc:
        raise InvalidCallbackUrl(f"callback URL cannot be parsed: {exc}") from exc
    if scheme not in _SCHEMES:
        raise InvalidCallbackUrl("callback URL must be an absolute http:// or https:// URL")
    if not host or not parsed.is_absolute():
        raise InvalidCallbackUrl("callback URL has no host")
    if has_userinfo:
        raise InvalidCallbackUrl("callback URL must not contain a user name or password")
    if port is None or not 0 < port <= 65535:
        raise InvalidCallbackUrl(f"callback URL has an invalid port: {port}")
    if literal_ip(host) is None:
        if not _HOST_NAME.fullmatch(host):
            raise InvalidCallbackUrl(f"callback URL has an invalid host: {host[:100]!r}")
        # DNS's limits (RFC 1035): a name the resolver would refuse is refused here, with the reason.
        if len(host.rstrip(".")) > MAX_HOST_NAME_CHARS or any(
            len(label) > MAX_LABEL_CHARS for label in host.split(".")
        ):
            raise InvalidCallbackUrl(
                f"callback URL's host is not a DNS name: at most {MAX_HOST_NAME_CHARS} characters, "
                f"{MAX_LABEL_CHARS} between dots"
            )
    return CallbackTarget(scheme=scheme, host=host, port=port)


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """Parse the BSD ``inet_aton`` spellings: 1 to 4 parts, each hex, octal or decimal, the last filling the rest.

    Reimplemented rather than calling ``socket.inet_aton``, which on glibc also accepts anything after a space.
    """
    parts = host.split(".")
    if len(parts) > 4:
        return None
    values: list[int] = []
    for part in parts:
        if not _INET_ATON_PART.fullmatch(part):
            return None
        if part[:2] in ("0x", "0X"):
            values.append(int(part[2:] or "0", 16))
        else:
            values.append(int(part, 8 if part.startswith("0") else 10))
    *leading, last = values
    if any(value > 0xFF for value in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


@functools.lru_cache(maxsize=4096)
def literal_ip(host: str) -> IPAddress | None:
    """Recognise an IP literal in any spelling a client library or OS resolver would accept.

    Handles dotted quads and the BSD forms (``2130706433``, ``0x7f000001``, ``0x7f.0.0.1``, ``0177.0.0.1``,
    ``127.1``), IPv6 with or without brackets (including IPv4-mapped forms), a trailing dot, and IPv6 zone ids
    (``%eth0`` or URL-encoded ``%25eth0``; the zone is kept on the returned address).

    Args:
        host: A host as it appears in a URL or as a resolver returned it.

    Returns:
        The address, or None if ``host`` is a name rather than an IP literal.
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        address, percent, zone = host.partition("%")
        if percent:
            # A zone id in a URL is percent-encoded as %25.
            zone = zone[2:] if zone.startswith("25") and len(zone) > 2 else zone
            if not zone:
                return None
            address = f"{address}%{zone}"
        try:
            return ipaddress.IPv6Address(address)
        except ValueError:
            return None
    # Resolvers and browsers treat "127.0.0.1." as 127.0.0.1, whatever inet_aton says.
    return _inet_aton(host.rstrip(".")) if host.rstrip(".") else None


def _embedded_v4(ip: ipaddress.IPv6Address, shift: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address((int(ip) >> shift) & 0xFFFFFFFF)


def is_forbidden(ip: IPAddress) -> bool:
    """Whether Relay must refuse to connect to ``ip`` because it is not publicly routable.

    Covers loopback, private, link-local (including cloud metadata), CGNAT, unspecified, multicast, reserved,
    broadcast, benchmarking and documentation ranges, and IPv6 addresses that embed a forbidden IPv4 address
    (IPv4-mapped, IPv4-compatible, 6to4, NAT64).

    Args:
        ip: The address to check; an IPv6 zone id is ignored.

    Returns:
        True if the address must not be reached.
    """
    if isinstance(ip, ipaddress.IPv4Address):
        return ip.is_multicast or not ip.is_global or any(ip in net for net in _FORBIDDEN_V4)
    if ip.scope_id is not None:
        # Scoped addresses never compare equal to unscoped network bounds; the zone does not change the class.
        ip = ipaddress.IPv6Address(int(ip))
    if ip in _V4_MAPPED:
        # The kernel connects to the embedded IPv4 address, so that is the address to judge.
        return is_forbidden(_embedded_v4(ip, 0))
    if ip in _NAT64:
        return is_forbidden(_embedded_v4(ip, 0))
    if ip in _V4_COMPATIBLE or ip == _AWS_METADATA_V6 or ip not in _GLOBAL_UNICAST_V6:
        return True
    if ip in _SIX_TO_FOUR and is_forbidden(_embedded_v4(ip, 80)):
        return True
    return ip.is_multicast or not ip.is_global or any(ip in net for net in _FORBIDDEN_V6)


def check_literal(host: str, *, allow_private: bool) -> None:
    """Refuse a host that is a forbidden IP literal, in any spelling, without DNS.

    Args:
        host: The URL's host.
        allow_private: Let private addresses through (development and tests only).

    Raises:
        ForbiddenAddress: ``host`` is an IP literal that must not be reached.
    """
    if allow_private:
        return
    ip = literal_ip(host)
    if ip is not None and is_forbidden(ip):
        raise ForbiddenAddress(host, str(ip))


async def _system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for family, _, _, _, sockaddr in infos:
        address = str(sockaddr[0])
        if family == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3]:
            # A link-local IPv6 address is only reachable through its interface, so keep the scope.
            address = f"{address}%{sockaddr[3]}"
        addresses.append(address)
    return addresses


async def resolve_checked(host: str, port: int, *, allow_private: bool, resolve: Resolve | None = None) -> list[str]:
    """Resolve ``host`` once and return the addresses to connect to, all of them checked.

    An IP literal in any spelling is used as is (normalised) without DNS. A name is resolved with ``resolve``
    (default: the event loop's ``getaddrinfo``); if any address it returns is forbidden the whole host is
    refused, since the client might pick any of them.

    Args:
        host: A host name or IP literal.
        port: The port to connect to (passed to the resolver).
        allow_private: Let private addresses through (development and tests only).
        resolve: ``async (host, port) -> addresses``; defaults to the system resolver.

    Returns:
        Normalised address strings, without duplicates, in resolver order.

    Raises:
        ForbiddenAddress: ``host`` is, or resolves to, an address that must not be reached.
        OSError: Resolution failed (the resolver's own error, unchanged) or returned no usable address.
    """
    literal = literal_ip(host)
    if literal is not None:
        if not allow_private and is_forbidden(literal):
            raise ForbiddenAddress(host, str(literal))
        return [str(literal)]
    resolved = await (resolve or _system_resolve)(host, port)
    if not resolved:
        raise OSError(f"{host} resolved to no addresses")
    addresses: list[str] = []
    for raw in resolved:
        ip = literal_ip(raw)
        if ip is None:
            raise OSError(f"resolving {host} returned {raw!r}, which is not an IP address")
        if not allow_private and is_forbidden(ip):
            raise ForbiddenAddress(host, raw)
        if str(ip) not in addresses:
            addresses.append(str(ip))
    return addresses


async def check_callback_url(url: str, *, allow_private: bool, resolve: Resolve | None = None) -> CallbackTarget:
    """Parse a callback URL and check where it resolves to (the submit-time check).

    Args:
        url: The URL as submitted.
        allow_private: Let private addresses through (development and tests only).
        resolve: ``async (host, port) -> addresses``; defaults to the system resolver.

    Returns:
        The parsed target.

    Raises:
        InvalidCallbackUrl: The URL is not an absolute http(s) URL with a host.
        ForbiddenAddress: The host is, or resolves to, an address that must not be reached.
        OSError: The host does not resolve.
    """
    target = parse_callback_url(url)
    await resolve_checked(target.host, target.port, allow_private=allow_private, resolve=resolve)
    return target
