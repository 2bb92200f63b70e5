"""Who a request comes from: the peer, or behind N trusted proxies the X-Forwarded-For entry the outermost added."""

from __future__ import annotations

import pytest
from litestar import Request

from service.api.ws import client_address


def request(*forwarded: str, peer: str = "10.0.0.9") -> Request:  # type: ignore[type-arg]
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return Request(scope={"type": "http", "headers": headers, "client": (peer, 50000)})  # type: ignore[typeddict-item]


@pytest.mark.parametrize(
    ("trusted", "forwarded", "client"),
    [
        (0, ["198.51.100.1"], "10.0.0.9"),  # no trusted proxy: the header is the client's own words
        (1, ["198.51.100.1"], "198.51.100.1"),
        (1, ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # what the client wrote stands to the left
        (2, ["6.6.6.6, 198.51.100.1, 10.1.0.1"], "198.51.100.1"),
        (3, ["6.6.6.6, 198.51.100.1, 10.2.0.1, 10.1.0.1"], "198.51.100.1"),
        (2, ["6.6.6.6, 198.51.100.1", "10.1.0.1"], "198.51.100.1"),  # two header lines are one list
        (2, ["198.51.100.1"], "10.0.0.9"),  # fewer entries than trusted proxies: none of them is trusted
        (1, [], "10.0.0.9"),
        (1, [" , "], "10.0.0.9"),  # an empty entry names nobody
    ],
)
def test_the_client_is_the_entry_the_outermost_trusted_proxy_added(
    trusted: int, forwarded: list[str], client: str
) -> None:
    assert client_address(request(*forwarded), trusted_proxies=trusted) == client
