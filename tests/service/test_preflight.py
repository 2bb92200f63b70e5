"""`relay api` and `relay worker` refuse, in one line, a storage that is not what the settings say."""

from __future__ import annotations

import pytest
import redis

from delivery import keys
from delivery.errors import ConfigError
from service.preflight import check_storage
from service.processes import free_port
from service.settings import Settings
from tests.cluster import LocalCluster
from tests.conftest import RedisServer

AMQP = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.mark.standalone_only("the test's Redis must not be a cluster node, which the slot-checked run's is")
def test_a_standalone_redis_given_as_a_cluster_is_refused(redis_server: RedisServer, redis_url: str) -> None:
    settings = Settings.from_env(
        {"RELAY_REDIS_MODE": "cluster", "RELAY_REDIS_URL": redis_url.removesuffix("/0"), "RELAY_BROKER_URL": AMQP}
    )
    with pytest.raises(
        ConfigError, match=r"^RELAY_REDIS_MODE: cluster, but 127\.0\.0\.1:\d+ is not a Redis Cluster node"
    ):
        check_storage(settings)


@pytest.mark.cluster
def test_a_cluster_node_given_as_a_standalone_redis_is_refused(cluster: LocalCluster) -> None:
    first = cluster.url.split(",")[0]
    with pytest.raises(
        ConfigError, match=r"^RELAY_REDIS_URL: 127\.0\.0\.1:\d+ is a Redis Cluster node: set RELAY_REDIS_MODE=cluster"
    ):
        check_storage(Settings.from_env({"RELAY_REDIS_URL": first}))


@pytest.mark.cluster
def test_a_store_of_other_partitions_is_refused_naming_the_count_it_was_made_with(cluster: LocalCluster) -> None:
    settings = {"RELAY_REDIS_MODE": "cluster", "RELAY_REDIS_URL": cluster.url, "RELAY_BROKER_URL": AMQP}
    check_storage(Settings.from_env(settings))  # a new store: nothing to compare with
    client = cluster.client(cluster.master_for_slot(redis.crc.key_slot(keys.LAYOUT.encode())))
    client.hset(keys.LAYOUT, "partitions", 64)
    client.close()
    check_storage(Settings.from_env(settings))  # 64: the cluster's default
    with pytest.raises(
        ConfigError, match=r"^RELAY_PARTITIONS: this store was made with 64 partitions .* set RELAY_PARTITIONS=64"
    ):
        check_storage(Settings.from_env({**settings, "RELAY_PARTITIONS": "32"}))


def test_a_storage_that_does_not_answer_yet_is_not_a_mismatch() -> None:
    check_storage(Settings.from_env({"RELAY_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}))
