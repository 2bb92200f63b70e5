"""A check of the storage before `relay api` or `relay worker` starts: that it is what RELAY_REDIS_MODE says (a
cluster's node, or a Redis that is not one) and that its keyspace has the partitions this process would use. A
mismatch stops the command with one line naming the setting; a storage that does not answer yet is not a mismatch
(it may come up later: /ready says so meanwhile)."""

from __future__ import annotations

import logging

import redis
from redis.exceptions import RedisClusterException, RedisError

from delivery import keys
from delivery.errors import ConfigError
from delivery.redis_client import address_of, connect_sync
from service.settings import Settings

log = logging.getLogger("relay.preflight")

# How long each node may take to answer.
TIMEOUT_S = 2.0


def check_storage(settings: Settings) -> None:
    """Raise :class:`ConfigError` when the storage answers and is not what the settings say."""
    seeds = [seed.strip() for seed in settings.storage_url.split(",") if seed.strip()]
    answered = False
    for seed in seeds:
        client = redis.Redis.from_url(seed, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
        try:
            enabled = int(client.info("cluster").get("cluster_enabled", 0))
        except (RedisError, OSError):
            continue
        finally:
            client.close()
        answered = True
        where = address_of(seed)
        if settings.cluster and not enabled:
            raise ConfigError(
                f"RELAY_REDIS_MODE: cluster, but {where} is not a Redis Cluster node (cluster support disabled): "
                "give a cluster's nodes in RELAY_REDIS_URL, or unset RELAY_REDIS_MODE for a standalone Redis"
            )
        if not settings.cluster and enabled:
            raise ConfigError(
                f"RELAY_REDIS_URL: {where} is a Redis Cluster node: set RELAY_REDIS_MODE=cluster (and a "
                "RELAY_BROKER_URL of its own) and list the cluster's nodes"
            )
        break
    if not answered:
        log.warning(
            "the storage does not answer yet (%s); starting anyway: /ready answers 503 until it does",
            seeds[0].split("@")[-1],
        )
        return
    client_any = connect_sync(settings.storage_url, cluster=settings.cluster, command_timeout_s=TIMEOUT_S)
    try:
        stored = client_any.hget(keys.LAYOUT, "partitions")
    except (RedisError, RedisClusterException, OSError):
        return
    finally:
        client_any.close()
    if stored is not None and int(stored) != settings.partition_count:
        raise ConfigError(
            f"RELAY_PARTITIONS: this store was made with {int(stored)} partitions and this process would use "
            f"{settings.partition_count}: set RELAY_PARTITIONS={int(stored)} (a store's partitions are fixed for its life)"
        )
