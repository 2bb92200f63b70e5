"""Redis connections, made the same way everywhere.

redis-py 8 defaults to a 5 s socket timeout, which breaks blocking reads and, on Python 3.11, can swallow
task cancellation; Relay turns it off and bounds its own blocking calls instead.
"""

from __future__ import annotations

import functools
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

# Connections one process may open; the API and the engine pipeline their commands, so few are needed.
DEFAULT_MAX_CONNECTIONS = 64
# A command waits this long for a free connection when all are busy (a burst of subscribes after a restart).
POOL_WAIT_S = 10.0


def as_text(value: bytes | str) -> str:
    """A reply that may come back as bytes (the clients here do not decode responses)."""
    return value.decode() if isinstance(value, bytes) else value


def connect(
    url: str,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    command_timeout_s: float | None = None,
    pool_wait_s: float = POOL_WAIT_S,
    retries: int = 3,
) -> aioredis.Redis:
    """A client with its own pool.

    ``command_timeout_s`` bounds each command (a stalled Redis then raises ``TimeoutError`` instead of hanging):
    right for request handlers, which answer 503 rather than wait; wrong for blocking reads such as pub/sub.
    ``retries``: connection errors retried on a fresh connection. A pub/sub listener takes 0, so that a drop
    reaches it (redis-py would otherwise reconnect and subscribe again inside ``listen()``, and what was
    published in the gap would pass unnoticed).
    """
    # A blocking pool: past max_connections a command waits for a connection instead of failing with
    # "Too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_wait_s,
        socket_timeout=command_timeout_s,
        socket_connect_timeout=command_timeout_s or 5,
        health_check_interval=30,
        # from_url leaves redis-py with no retries: after a Redis restart every pooled connection would fail
        # its next command. Reconnect and retry connection errors a few times instead; a timeout is not
        # retried (a stalled Redis would only make the caller wait longer).
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries, supported_errors=(RedisConnectionError,)),
    )
    pool.connection_class = _quick_packing(pool.connection_class)  # type: ignore[arg-type]
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


class _QuickPack:
    """Packs a command the way redis-py does, in one pass (redis-py's packer is the larger part of a command's
    client-side cost here: py-spy put it at 9 % of a worker's CPU, for Lua steps of 20 to 40 arguments).

    Same bytes on the wire (a test compares them); values of any other type go to redis-py's encoder, which
    refuses what it refuses.
    """

    encoder: Any

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, str):
            args = (*name.encode().split(), *args[1:])
        elif b" " in name:
            args = (*name.split(), *args[1:])
        parts = [b"*%d\r\n" % len(args)]
        encode = self.encoder.encode
        for arg in args:
            kind = type(arg)
            if kind is bytes:
                value = arg
            elif kind is str:
                value = arg.encode(self.encoder.encoding, self.encoder.encoding_errors)
            elif kind is int or kind is float:
                value = repr(arg).encode()
            else:
                value = bytes(encode(arg))
            parts.append(b"$%d\r\n%s\r\n" % (len(value), value))
        return [b"".join(parts)]


@functools.cache
def _quick_packing(connection_class: type[Any]) -> type[Any]:
    return type(f"Quick{connection_class.__name__}", (_QuickPack, connection_class), {})
