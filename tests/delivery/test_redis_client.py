"""Relay's Redis client: commands packed as redis-py packs them, and sent to a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis._parsers.encoders import Encoder
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError

from delivery.redis_client import _quick_packing, connect

ARGS: list[tuple[Any, ...]] = [
    ("GET", "k"),
    ("EVALSHA", "f" * 40, 2, "relay:{task_1}:a", b"relay:{task_1}:b", 0, -7, 1.5, 1e300, 0.1, "é ✓", b"\x00\xff", ""),
    ("CLIENT SETNAME", "relay"),  # a command name with a space is split, as redis-py does
    (b"CONFIG GET", b"maxmemory"),
    ("SET", "k", bytearray(b"ba"), memoryview(b"mv")),
    ("SET", "big", "x" * 100_000),
]


def _pair() -> tuple[Any, Any]:
    ours, theirs = _quick_packing(Connection).__new__(_quick_packing(Connection)), Connection.__new__(Connection)
    for connection in (ours, theirs):
        connection.encoder = Encoder("utf-8", "strict", False)
        connection._buffer_cutoff = 6000
    return ours, theirs


@pytest.mark.parametrize("args", ARGS)
def test_packs_the_bytes_redis_py_packs(args: tuple[Any, ...]) -> None:
    ours, theirs = _pair()
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))


@pytest.mark.parametrize("value", [True, None, object(), [1]])
def test_refuses_what_redis_py_refuses(value: Any) -> None:
    ours, _ = _pair()
    with pytest.raises(DataError):
        ours.pack_command("SET", "k", value)


def test_every_connection_kind_keeps_its_own_class() -> None:
    assert issubclass(_quick_packing(UnixDomainSocketConnection), UnixDomainSocketConnection)
    assert _quick_packing(Connection) is _quick_packing(Connection)


async def test_commands_and_pipelines_round_trip(redis_url: str) -> None:
    client: aioredis.Redis = connect(redis_url)
    try:
        value = "é ✓ " * 5000
        await client.set("relay-test:k", value)
        assert (await client.get("relay-test:k")).decode() == value
        async with client.pipeline(transaction=False) as pipe:
            pipe.incrbyfloat("relay-test:f", 1.5)
            pipe.eval("return {ARGV[1], ARGV[2]}", 0, 7, b"\x00\xff")
            assert await pipe.execute() == [2 * 0.75, [b"7", b"\x00\xff"]]
    finally:
        for key in ("relay-test:k", "relay-test:f"):  # one by one: on a cluster they live in two slots
            await client.delete(key)
        await client.aclose()


async def test_a_write_on_a_transport_closed_under_the_connection_is_a_connection_error(redis_url: str) -> None:
    """uvloop raises RuntimeError when a write meets a transport a timeout closed: a connection error to callers
    (a 503, a retry), never a bug's 500; the retry on a fresh connection then succeeds."""
    client = connect(redis_url, command_timeout_s=2.0)  # as the API's: a write bounded by the timeout
    try:
        await client.set("probe", "1")
        pool = client.connection_pool
        connection = await pool.get_connection()
        broken = {"left": 1}
        original = connection._send_packed_command

        async def closed(command: Any) -> None:
            if broken["left"]:
                broken["left"] -= 1
                raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")
            await original(command)

        connection._send_packed_command = closed  # type: ignore[method-assign]
        with pytest.raises(redis.exceptions.ConnectionError, match="closed under a write"):
            await connection.send_packed_command(connection.pack_command("GET", "probe"))
        await pool.release(connection)
        assert await client.get("probe") == b"1"
    finally:
        await client.aclose()
