"""Redis connections, made the same way everywhere.

redis-py 8 defaults to a 5 s socket timeout, which breaks blocking reads and, on Python 3.11, can swallow
task cancellation; Relay turns it off and bounds its own blocking calls instead.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

# Connections one process may open; the API and the engine pipeline their commands, so few are needed.
DEFAULT_MAX_CONNECTIONS = 64
# A command waits this long for a free connection when all are busy (a burst of subscribes after a restart).
POOL_WAIT_S = 10.0


def connect(url: str, *, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> aioredis.Redis:
    # A blocking pool: past max_connections a command waits for a connection instead of failing with
    # "Too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        socket_timeout=None,
        socket_connect_timeout=5,
        health_check_interval=30,
        # from_url leaves redis-py with no retries: after a Redis restart every pooled connection would fail
        # its next command (a 500 from the API). Reconnect and retry connection errors a few times instead.
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes both
