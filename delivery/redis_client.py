"""Redis connections, made the same way everywhere.

redis-py 8 defaults to a 5 s socket timeout, which breaks blocking reads and, on Python 3.11, can swallow
task cancellation; Relay turns it off and bounds its own blocking calls instead.
"""

from __future__ import annotations

import redis.asyncio as aioredis

# Connections one process may open; the API and the engine pipeline their commands, so few are needed.
DEFAULT_MAX_CONNECTIONS = 64


def connect(url: str, *, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        socket_timeout=None,
        socket_connect_timeout=5,
        max_connections=max_connections,
        health_check_interval=30,
    )
