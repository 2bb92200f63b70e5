"""The API's view of the store's room, against a real redis-server: new work is refused from the high-water mark
of maxmemory on (before Redis itself refuses at maxmemory), taken again below the low-water mark, and a burst
between two readings counts against it. On a Redis Cluster, every master is read."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import cast

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster

from delivery import keys
from delivery.redis_client import connect
from delivery.store_refusals import WriteRefusal
from service.api.store_watch import HIGH_WATER, LOW_WATER, StoreWatch
from tests.conftest import LocalCluster, RedisServer


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def admin(redis_server: RedisServer, redis_url: str) -> Iterator[sync_redis.Redis]:
    client = redis_server.client()
    yield client
    client.config_set("maxmemory", 0)
    client.close()


def used(admin: sync_redis.Redis) -> int:
    return int(admin.info("memory")["used_memory"])


async def test_new_work_is_refused_from_the_high_water_mark_and_taken_again_below_the_low_one(
    redis: aioredis.Redis, admin: sync_redis.Redis
) -> None:
    watch = StoreWatch(redis, read_every_s=3600)  # read only when told to
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", int(used(admin) / (HIGH_WATER + 0.03)))  # past the high-water mark, below max
    await watch.refresh()
    assert watch.refusal() is WriteRefusal.FULL
    assert watch.describe().startswith("full: used_memory")

    # Between the two marks it stays refused (no flapping at the mark) ...
    admin.config_set("maxmemory", int(used(admin) / ((HIGH_WATER + LOW_WATER) / 2)))
    await watch.refresh()
    assert watch.refusal() is WriteRefusal.FULL
    # ... and below the low one it takes work again.
    admin.config_set("maxmemory", used(admin) * 2)
    await watch.refresh()
    assert watch.refusal() is None
    assert watch.describe() == "ok"


async def test_what_this_process_stored_since_the_last_reading_counts(
    redis: aioredis.Redis, admin: sync_redis.Redis
) -> None:
    watch = StoreWatch(redis, read_every_s=3600)
    limit = used(admin) * 2
    admin.config_set("maxmemory", limit)
    await watch.refresh()
    assert watch.refusal() is None

    watch.stored(limit)  # a burst of submissions before the next reading
    assert watch.refusal() is WriteRefusal.FULL


async def test_no_maxmemory_never_refuses(redis: aioredis.Redis, admin: sync_redis.Redis) -> None:
    watch = StoreWatch(redis, read_every_s=3600)
    admin.config_set("maxmemory", 0)
    await watch.refresh()
    watch.stored(10**12)
    assert watch.refusal() is None


@pytest.mark.cluster
async def test_on_a_cluster_every_master_is_read_and_the_one_nearest_its_maxmemory_decides(
    cluster: LocalCluster, cluster_redis: aiocluster.RedisCluster
) -> None:
    old = keys.use(keys.Layout.of(16))  # a cluster's store: partitions on every master
    masters = [node.port for node in cluster.nodes() if node.role == "master"]
    try:
        # Typed as the standalone client, as Relay's storage is (delivery.redis_client.connect_storage).
        watch = StoreWatch(cast(aioredis.Redis, cluster_redis), read_every_s=3600)
        await watch.refresh()  # a client that has sent nothing yet: it finds the masters first
        assert watch.refusal() is None
        assert watch.reading.used_bytes > 0
        assert watch.describe() == "ok"

        # The last master past the high-water mark: the store refuses new work as a whole.
        with cluster.client(masters[-1]) as last:
            last.config_set("maxmemory-policy", "noeviction")
            last.config_set("maxmemory", int(used(last) / (HIGH_WATER + 0.03)))
            await watch.refresh()
            assert watch.refusal() is WriteRefusal.FULL
            assert watch.reading.max_bytes == int(last.config_get("maxmemory")["maxmemory"])
            last.config_set("maxmemory", 0)
        await watch.refresh()
        assert watch.refusal() is None

        # One master that refuses writes (too few replicas): its partitions' probes say so.
        with cluster.client(masters[0]) as first:
            first.config_set("min-replicas-to-write", 1)
            try:
                await watch.refresh()
                assert watch.refusal() is WriteRefusal.NOREPLICAS
            finally:
                first.config_set("min-replicas-to-write", 0)
        await watch.refresh()
        assert watch.refusal() is None
    finally:
        keys.use(old)
        for port in masters:
            with cluster.client(port) as node:
                node.config_set("maxmemory", 0)
                node.config_set("min-replicas-to-write", 0)
