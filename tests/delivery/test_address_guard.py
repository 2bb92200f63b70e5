"""The SSRF guard refuses every spelling of a non-public address and never lets DNS sneak one past it.

No test here opens a connection or asks real DNS: names resolve through fakes, and ``socket.getaddrinfo`` is
replaced for every test so an accidental lookup fails loudly instead of leaving the machine.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from delivery.address_guard import (
    MAX_URL_LENGTH,
    CallbackTarget,
    check_callback_url,
    check_literal,
    is_forbidden,
    literal_ip,
    parse_callback_url,
    resolve_checked,
)
from delivery.errors import ForbiddenAddress, InvalidCallbackUrl


@pytest.fixture(autouse=True)
def no_real_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a test asked real DNS: getaddrinfo{args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)


class FakeDns:
    """``async (host, port) -> addresses`` over a fixed table; unknown names fail like getaddrinfo does."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


async def dns_must_not_be_asked(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} is an IP literal and must not be resolved")


# (spelling, the address it means); every one of these must be refused.
FORBIDDEN = [
    pytest.param("127.0.0.1", "127.0.0.1", id="loopback-dotted"),
    pytest.param("2130706433", "127.0.0.1", id="loopback-decimal"),
    pytest.param("0x7f000001", "127.0.0.1", id="loopback-hex"),
    pytest.param("0X7F.0.0.1", "127.0.0.1", id="loopback-hex-first-part"),
    pytest.param("0177.0.0.1", "127.0.0.1", id="loopback-octal"),
    pytest.param("127.1", "127.0.0.1", id="loopback-short"),
    pytest.param("0x7f.1", "127.0.0.1", id="loopback-hex-short"),
    pytest.param("127.0.0.1.", "127.0.0.1", id="loopback-trailing-dot"),
    pytest.param("127.255.255.254", "127.255.255.254", id="loopback-top-of-range"),
    pytest.param("::1", "::1", id="loopback-v6"),
    pytest.param("[::1]", "::1", id="loopback-v6-bracketed"),
    pytest.param("0:0:0:0:0:0:0:1", "::1", id="loopback-v6-long"),
    pytest.param("::ffff:127.0.0.1", "::ffff:7f00:1", id="loopback-v4-mapped-dotted"),
    pytest.param("::ffff:7f00:1", "::ffff:7f00:1", id="loopback-v4-mapped-hex"),
    pytest.param("[::ffff:127.0.0.1]", "::ffff:7f00:1", id="loopback-v4-mapped-bracketed"),
    pytest.param("::127.0.0.1", "::7f00:1", id="loopback-v4-compatible"),
    pytest.param("0.0.0.0", "0.0.0.0", id="unspecified"),
    pytest.param("0", "0.0.0.0", id="unspecified-decimal"),
    pytest.param("1", "0.0.0.1", id="this-network-single-number"),
    pytest.param("::", "::", id="unspecified-v6"),
    pytest.param("10.0.0.5", "10.0.0.5", id="private-10"),
    pytest.param("012.0.0.5", "10.0.0.5", id="private-10-octal"),
    pytest.param("0xa000005", "10.0.0.5", id="private-10-hex"),
    pytest.param("172.16.0.1", "172.16.0.1", id="private-172"),
    pytest.param("172.31.255.255", "172.31.255.255", id="private-172-top"),
    pytest.param("192.168.1.1", "192.168.1.1", id="private-192"),
    pytest.param("3232235777", "192.168.1.1", id="private-192-decimal"),
    pytest.param("fc00::1", "fc00::1", id="unique-local-fc"),
    pytest.param("fd12:3456::1", "fd12:3456::1", id="unique-local-fd"),
    pytest.param("169.254.169.254", "169.254.169.254", id="metadata"),
    pytest.param("2852039166", "169.254.169.254", id="metadata-decimal"),
    pytest.param("0xa9fea9fe", "169.254.169.254", id="metadata-hex"),
    pytest.param("0xa9.0xfe.0xa9.0xfe", "169.254.169.254", id="metadata-hex-parts"),
    pytest.param("0251.0376.0251.0376", "169.254.169.254", id="metadata-octal"),
    pytest.param("169.254.43518", "169.254.169.254", id="metadata-short"),
    pytest.param("::ffff:169.254.169.254", "::ffff:a9fe:a9fe", id="metadata-v4-mapped"),
    pytest.param("::ffff:a9fe:a9fe", "::ffff:a9fe:a9fe", id="metadata-v4-mapped-hex"),
    pytest.param("fd00:ec2::254", "fd00:ec2::254", id="metadata-aws-v6"),
    pytest.param("[fd00:ec2::254]", "fd00:ec2::254", id="metadata-aws-v6-bracketed"),
    pytest.param("fe80::1", "fe80::1", id="link-local-v6"),
    pytest.param("fe80::1%eth0", "fe80::1%eth0", id="link-local-v6-zone"),
    pytest.param("fe80::1%25eth0", "fe80::1%eth0", id="link-local-v6-url-encoded-zone"),
    pytest.param("100.64.0.1", "100.64.0.1", id="cgnat"),
    pytest.param("100.127.255.254", "100.127.255.254", id="cgnat-top"),
    pytest.param("::ffff:100.64.0.1", "::ffff:6440:1", id="cgnat-v4-mapped"),
    pytest.param("224.0.0.1", "224.0.0.1", id="multicast"),
    pytest.param("239.255.255.250", "239.255.255.250", id="multicast-ssdp"),
    pytest.param("ff02::1", "ff02::1", id="multicast-v6"),
    pytest.param("255.255.255.255", "255.255.255.255", id="broadcast"),
    pytest.param("240.0.0.1", "240.0.0.1", id="reserved"),
    pytest.param("198.18.0.1", "198.18.0.1", id="benchmarking"),
    pytest.param("198.19.255.255", "198.19.255.255", id="benchmarking-top"),
    pytest.param("192.0.2.1", "192.0.2.1", id="documentation-test-net-1"),
    pytest.param("198.51.100.1", "198.51.100.1", id="documentation-test-net-2"),
    pytest.param("203.0.113.1", "203.0.113.1", id="documentation-test-net-3"),
    pytest.param("2001:db8::1", "2001:db8::1", id="documentation-v6"),
    pytest.param("2002:7f00:1::1", "2002:7f00:1::1", id="6to4-loopback"),
    pytest.param("2002:a9fe:a9fe::", "2002:a9fe:a9fe::", id="6to4-metadata"),
    pytest.param("64:ff9b::7f00:1", "64:ff9b::7f00:1", id="nat64-loopback"),
    pytest.param("64:ff9b::169.254.169.254", "64:ff9b::a9fe:a9fe", id="nat64-metadata"),
    pytest.param("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:0:4136:e378:8000:63bf:3fff:fdd2", id="teredo"),
]

PUBLIC = [
    pytest.param("8.8.8.8", "8.8.8.8", id="dotted"),
    pytest.param("1.1.1.1", "1.1.1.1", id="dotted-cloudflare"),
    pytest.param("1572395042", "93.184.216.34", id="decimal"),
    pytest.param("0x5db8d822", "93.184.216.34", id="hex"),
    pytest.param("93.184.216.34.", "93.184.216.34", id="trailing-dot"),
    pytest.param("2606:4700:4700::1111", "2606:4700:4700::1111", id="v6"),
    pytest.param("[2606:4700:4700::1111]", "2606:4700:4700::1111", id="v6-bracketed"),
    pytest.param("::ffff:8.8.8.8", "::ffff:808:808", id="v4-mapped-public"),
    pytest.param("2002:808:808::1", "2002:808:808::1", id="6to4-public"),
    pytest.param("64:ff9b::8.8.8.8", "64:ff9b::808:808", id="nat64-public"),
]


@pytest.mark.parametrize(("spelling", "address"), FORBIDDEN + PUBLIC)
def test_literal_ip_reads_every_spelling(spelling: str, address: str) -> None:
    assert str(literal_ip(spelling)) == address


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("example.com", id="name"),
        pytest.param("localhost", id="localhost"),
        pytest.param("127.0.0.1.nip.io", id="name-starting-with-an-address"),
        pytest.param("1.2.3.4.5", id="five-parts"),
        pytest.param("08.0.0.1", id="bad-octal-digit"),
        pytest.param("256.0.0.1", id="part-over-255"),
        pytest.param("4294967296", id="decimal-over-32-bits"),
        pytest.param("0x1g", id="bad-hex-digit"),
        pytest.param("1_0.0.0.1", id="underscore-digit-separator"),
        pytest.param("1.2.3.4 x", id="trailing-garbage"),
        pytest.param("[::1", id="unclosed-bracket"),
        pytest.param("", id="empty"),
    ],
)
def test_names_and_garbage_are_not_ip_literals(host: str) -> None:
    assert literal_ip(host) is None


@pytest.mark.parametrize(("spelling", "address"), FORBIDDEN)
async def test_forbidden_literal_is_refused_without_dns(spelling: str, address: str) -> None:
    with pytest.raises(ForbiddenAddress) as refused:
        await resolve_checked(spelling, 443, allow_private=False, resolve=dns_must_not_be_asked)
    assert refused.value.host == spelling
    assert refused.value.address == address
    with pytest.raises(ForbiddenAddress):
        check_literal(spelling, allow_private=False)


@pytest.mark.parametrize(("spelling", "address"), PUBLIC)
async def test_public_literal_is_used_as_is(spelling: str, address: str) -> None:
    ip = literal_ip(spelling)
    assert ip is not None
    assert not is_forbidden(ip)
    assert await resolve_checked(spelling, 443, allow_private=False, resolve=dns_must_not_be_asked) == [address]
    check_literal(spelling, allow_private=False)


async def test_allow_private_lets_a_private_literal_through() -> None:
    addresses = await resolve_checked("0x7f.1", 8080, allow_private=True, resolve=dns_must_not_be_asked)
    assert addresses == ["127.0.0.1"]
    check_literal("169.254.169.254", allow_private=True)


def test_check_literal_ignores_names() -> None:
    check_literal("hooks.example.com", allow_private=False)


@pytest.mark.parametrize(
    ("answer", "refused_address"),
    [
        pytest.param(["10.0.0.5"], "10.0.0.5", id="private"),
        pytest.param(["93.184.216.34", "10.0.0.5"], "10.0.0.5", id="one-public-one-private"),
        pytest.param(["2606:4700:4700::1111", "::1"], "::1", id="public-v6-and-loopback-v6"),
        pytest.param(["::ffff:169.254.169.254"], "::ffff:169.254.169.254", id="v4-mapped-metadata"),
        pytest.param(["fd00:ec2::254"], "fd00:ec2::254", id="aws-v6-metadata"),
        pytest.param(["100.64.12.1"], "100.64.12.1", id="cgnat"),
    ],
)
async def test_name_resolving_to_a_forbidden_address_is_refused(answer: list[str], refused_address: str) -> None:
    dns = FakeDns({"hooks.example.com": answer})
    with pytest.raises(ForbiddenAddress) as refused:
        await resolve_checked("hooks.example.com", 443, allow_private=False, resolve=dns)
    assert refused.value.host == "hooks.example.com"
    assert refused.value.address == refused_address
    assert dns.asked == [("hooks.example.com", 443)]


async def test_name_resolving_to_public_addresses_returns_each_once() -> None:
    dns = FakeDns({"hooks.example.com": ["93.184.216.34", "2606:4700:4700::1111", "93.184.216.34"]})
    addresses = await resolve_checked("hooks.example.com", 443, allow_private=False, resolve=dns)
    assert addresses == ["93.184.216.34", "2606:4700:4700::1111"]


async def test_allow_private_lets_a_private_answer_through() -> None:
    dns = FakeDns({"receiver.internal": ["10.0.0.5", "::ffff:169.254.169.254"]})
    addresses = await resolve_checked("receiver.internal", 80, allow_private=True, resolve=dns)
    assert addresses == ["10.0.0.5", "::ffff:a9fe:a9fe"]


async def test_resolution_failure_propagates_unchanged() -> None:
    with pytest.raises(socket.gaierror) as failed:
        await resolve_checked("nowhere.example", 443, allow_private=False, resolve=FakeDns({}))
    assert failed.value.errno == socket.EAI_NONAME


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        pytest.param([], "no addresses", id="empty"),
        pytest.param(["not-an-address"], "not an IP address", id="not-an-address"),
    ],
)
async def test_unusable_answer_is_an_os_error(answer: list[str], message: str) -> None:
    with pytest.raises(OSError, match=message):
        await resolve_checked("odd.example", 443, allow_private=False, resolve=FakeDns({"odd.example": answer}))


async def test_default_resolver_asks_the_event_loop_for_stream_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, int, dict[str, Any]]] = []

    async def fake_getaddrinfo(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        asked.append((host, port, kwargs))
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1", port, 0, 2)),
        ]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(ForbiddenAddress) as refused:
        await resolve_checked("hooks.example.com", 443, allow_private=False)
    assert refused.value.address == "fe80::1%2"
    assert asked == [("hooks.example.com", 443, {"type": socket.SOCK_STREAM})]
    assert await resolve_checked("hooks.example.com", 443, allow_private=True) == ["93.184.216.34", "fe80::1%2"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("https://Hooks.Example.com/cb?x=1", CallbackTarget("https", "hooks.example.com", 443), id="https"),
        pytest.param("HTTP://example.com", CallbackTarget("http", "example.com", 80), id="upper-case-scheme"),
        pytest.param("http://example.com:8080/", CallbackTarget("http", "example.com", 8080), id="explicit-port"),
        pytest.param(
            "http://[2606:4700:4700::1111]:8443/cb",
            CallbackTarget("http", "2606:4700:4700::1111", 8443),
            id="v6-literal",
        ),
        pytest.param("https://bücher.example/", CallbackTarget("https", "xn--bcher-kva.example", 443), id="idna"),
        pytest.param("http://127.0.0.1/", CallbackTarget("http", "127.0.0.1", 80), id="private-still-parses"),
    ],
)
def test_parse_accepts_absolute_http_urls(url: str, expected: CallbackTarget) -> None:
    assert parse_callback_url(url) == expected


def test_parse_accepts_a_url_of_exactly_the_maximum_length() -> None:
    url = "https://example.com/"
    url += "a" * (MAX_URL_LENGTH - len(url))
    assert parse_callback_url(url).host == "example.com"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("ftp://example.com/hook", "http:// or https://", id="ftp"),
        pytest.param("javascript:alert(1)", "http:// or https://", id="javascript"),
        pytest.param("file:///etc/passwd", "http:// or https://", id="file"),
        pytest.param("/relative/hook", "http:// or https://", id="relative"),
        pytest.param("example.com/hook", "http:// or https://", id="no-scheme"),
        pytest.param("", "http:// or https://", id="empty"),
        pytest.param("http://", "no host", id="missing-host"),
        pytest.param("http:///hook", "no host", id="empty-authority"),
        pytest.param("http:example.com", "no host", id="no-slashes"),
        pytest.param("http://[::1", "cannot be parsed", id="unclosed-v6-bracket"),
        pytest.param("http://example.com:99999/", "cannot be parsed", id="port-too-large"),
        pytest.param("http://example.com:http/", "cannot be parsed", id="port-not-a-number"),
        pytest.param("http://example.com:0/", "invalid port", id="port-zero"),
        pytest.param("http://user:pw@example.com/", "user name or password", id="userinfo"),
        pytest.param("http://example.com@127.0.0.1/", "user name or password", id="userinfo-host-confusion"),
        pytest.param("http://example.com\\@127.0.0.1/", "backslash", id="backslash"),
        pytest.param("http://exa mple.com/", "whitespace", id="space"),
        pytest.param("http://example.com/\n", "whitespace", id="newline"),
        pytest.param("http://exa$mple.com/", "invalid host", id="bad-host-character"),
        pytest.param("https://example.com/" + "a" * MAX_URL_LENGTH, "longer than 2048", id="too-long"),
    ],
)
def test_parse_rejects_with_a_readable_reason(url: str, message: str) -> None:
    with pytest.raises(InvalidCallbackUrl, match=message):
        parse_callback_url(url)


async def test_check_callback_url_refuses_a_name_that_resolves_privately() -> None:
    dns = FakeDns({"hooks.example.com": ["10.0.0.5"]})
    with pytest.raises(ForbiddenAddress):
        await check_callback_url("https://hooks.example.com/cb", allow_private=False, resolve=dns)
    assert dns.asked == [("hooks.example.com", 443)]
    target = await check_callback_url("https://hooks.example.com/cb", allow_private=True, resolve=dns)
    assert target == CallbackTarget("https", "hooks.example.com", 443)


async def test_check_callback_url_refuses_an_obfuscated_literal() -> None:
    with pytest.raises(ForbiddenAddress):
        await check_callback_url(
            "http://0xa9fea9fe/latest/meta-data/", allow_private=False, resolve=dns_must_not_be_asked
        )


async def test_check_callback_url_accepts_a_public_name() -> None:
    dns = FakeDns({"hooks.example.com": ["93.184.216.34"]})
    target = await check_callback_url("http://hooks.example.com:8080/cb", allow_private=False, resolve=dns)
    assert target == CallbackTarget("http", "hooks.example.com", 8080)


async def test_check_callback_url_rejects_an_invalid_url_before_dns() -> None:
    with pytest.raises(InvalidCallbackUrl):
        await check_callback_url("ftp://hooks.example.com/", allow_private=False, resolve=dns_must_not_be_asked)
