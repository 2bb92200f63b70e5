"""Relay's Redis client on a real Redis Cluster (three masters; with replicas for the failover tests)."""

from __future__ import annotations

import time

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import TimeoutError as RedisTimeoutError

from delivery.redis_client import _quick_packing, connect, connect_sync, key_slot, parse_seeds
from tests.cluster import SLOTS, LocalCluster, free_ports

pytestmark = pytest.mark.cluster


def tags_by_master(cluster: LocalCluster) -> dict[int, str]:
    """A hash tag served by each master, by the master's port (tags chosen by their slot, not by their name)."""
    masters = [node for node in cluster.nodes() if node.role == "master" and node.slots]
    tags: dict[int, str] = {}
    for tag in (f"{{t{number}}}" for number in range(1000)):
        owner = next(node.port for node in masters if node.serves(key_slot(tag)))
        tags.setdefault(owner, tag)
    assert len(tags) == len(masters), "a tag for every master"
    return dict(sorted(tags.items()))


@pytest.fixture
def tags(cluster: LocalCluster) -> dict[int, str]:
    return tags_by_master(cluster)


# -- the cluster the tests run on --------------------------------------------------------------------------------


def test_three_masters_serve_every_slot_once(cluster: LocalCluster) -> None:
    masters = [node for node in cluster.nodes() if node.role == "master"]

    assert len(masters) == 3
    served = sorted(slot for node in masters for first, last in node.slots for slot in range(first, last + 1))
    assert served == list(range(SLOTS))
    for slot in (0, 5000, 16383):
        with cluster.client(cluster.master_for_slot(slot)) as client:
            assert client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0  # a master answers for its own


def test_key_slot_is_the_slot_the_cluster_computes(cluster: LocalCluster) -> None:
    keys: list[str | bytes] = ["task", "relay:{task_1}:record", b"relay:{task_1}:log", "{}x", "a{}{b}", "é ✓", b"\xff"]
    with cluster.client(cluster.ports[0]) as client:
        for key in keys:
            assert key_slot(key) == client.execute_command("CLUSTER", "KEYSLOT", key), key


# -- the client --------------------------------------------------------------------------------------------------


def test_seed_urls_name_every_seed_and_refuse_what_a_cluster_cannot_use() -> None:
    assert parse_seeds("redis://a:1,redis://b:2,redis://c") == [("a", 1), ("b", 2), ("c", 6379)]
    assert parse_seeds("rediss://u:secret@a:1,rediss://u:secret@b:2") == [("a", 1), ("b", 2)]
    refused = {
        "redis://a:1,": "seed 2 of the cluster URL is empty",
        "unix:///tmp/r.sock": "unix socket",
        "redis://a:1/2": "database",
        "redis://u:secret@a:1,redis://u:other@b:2": "differs from the first",
        "http://a:1": "seed 1 of the cluster URL",
        "redis://:1": "no host",
    }
    for url, reason in refused.items():
        with pytest.raises(ValueError, match=reason) as caught:
            parse_seeds(url)
        assert "secret" not in str(caught.value)


async def test_a_client_reaches_every_master_from_any_seed_that_answers(
    cluster: LocalCluster, tags: dict[int, str]
) -> None:
    (dead,) = free_ports(1)
    client = connect(f"redis://127.0.0.1:{dead}," + cluster.url, cluster=True)  # the first seed answers nothing
    try:
        value = "é ✓ " * 5000
        for port, tag in tags.items():
            await client.set(f"{tag}k", value + str(port))
        for port, tag in tags.items():
            assert (await client.get(f"{tag}k")).decode() == value + str(port)
            with cluster.client(port) as node:  # each key lives on the master of its slot
                assert node.get(f"{tag}k") == value + str(port)
        async with client.pipeline(transaction=False) as pipe:
            for tag in tags.values():
                pipe.incrbyfloat(f"{tag}f", 1.5)
            pipe.eval("return {ARGV[1], ARGV[2]}", 0, 7, b"\x00\xff")
            assert await pipe.execute() == [1.5, 1.5, 1.5, [b"7", b"\x00\xff"]]
    finally:
        await client.aclose()


async def test_every_node_connection_packs_commands_the_quick_way(cluster: LocalCluster, tags: dict[int, str]) -> None:
    client = connect(cluster.url, cluster=True)
    try:
        for tag in tags.values():
            await client.set(f"{tag}k", b"\x00\xff")
        connections = [c for node in client.get_nodes() for c in node._connections]
    finally:
        await client.aclose()

    # The packer itself is compared byte for byte with redis-py's in test_redis_client.
    assert len(connections) >= len(tags)
    assert {type(c) for c in connections} == {_quick_packing(Connection)}


async def test_a_command_to_a_frozen_master_times_out_once_and_the_others_still_answer(
    cluster: LocalCluster, tags: dict[int, str]
) -> None:
    client = connect(cluster.url, cluster=True, command_timeout_s=0.3)
    frozen, other = list(tags)[:2]
    try:
        await client.set(f"{tags[frozen]}k", "v")
        await client.set(f"{tags[other]}k", "v")
        cluster.freeze(frozen)
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await client.get(f"{tags[frozen]}k")
        assert time.monotonic() - started < 1.0  # one timeout, not one per retry
        assert await client.get(f"{tags[other]}k") == b"v"
    finally:
        cluster.thaw(frozen)
        await client.aclose()
    assert connect(cluster.url, cluster=True).connection_kwargs["socket_timeout"] is None  # no timeout by default


def test_a_sync_client_reaches_the_cluster_and_a_single_redis(
    cluster: LocalCluster, tags: dict[int, str], redis_url: str
) -> None:
    clients = [connect_sync(cluster.url, cluster=True), connect_sync(redis_url)]
    try:
        for client in clients:
            for tag in tags.values():
                client.set(f"{tag}k", "v")
                assert client.get(f"{tag}k") == b"v"
    finally:
        for client in clients:
            client.close()


# -- faults ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_client_follows_a_manual_failover_and_a_takeover(replicated_cluster: LocalCluster) -> None:
    cluster = replicated_cluster
    tag = next(iter(tags_by_master(cluster).values()))
    client = connect(cluster.url, cluster=True)
    try:
        await client.set(f"{tag}k", "v")
        old_master = cluster.master_for_slot(key_slot(tag))
        replica = cluster.replica_of(old_master)

        cluster.failover(replica)  # coordinated: the old master now answers MOVED for the slot
        assert cluster.master_for_slot(key_slot(tag)).port == replica.port
        assert await client.get(f"{tag}k") == b"v"
        assert await client.incr(f"{tag}n") == 1

        with cluster.client(replica) as node:
            assert node.execute_command("WAIT", 1, 2000) == 1
        cluster.kill(replica)
        cluster.failover(old_master)  # the old master takes over from the dead one
        assert await client.get(f"{tag}k") == b"v"
        assert await client.incr(f"{tag}n") == 2
    finally:
        await client.aclose()
