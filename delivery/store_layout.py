"""The store's layout (how many partitions its keyspace has), written once when the store is new and checked by
every process at start: a process that cut the keyspace otherwise would look for everything in the wrong place."""

from __future__ import annotations

import redis.asyncio as aioredis

from delivery import keys
from delivery.errors import ConfigError


async def check(redis: aioredis.Redis, layout: keys.Layout) -> None:
    """Write the layout if the store has none yet; raise :class:`ConfigError` when it was made with another."""
    count = len(layout)
    await redis.hsetnx(keys.LAYOUT, "partitions", count)
    stored = await redis.hget(keys.LAYOUT, "partitions")
    if stored is not None and int(stored) != count:
        raise ConfigError(
            f"this store was made with {int(stored)} partitions and this process uses {count}: set "
            f"RELAY_PARTITIONS={int(stored)} (a store's partitions are fixed for its life)"
        )
