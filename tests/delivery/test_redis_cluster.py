"""Relay's Redis client and batcher on a real Redis Cluster (three masters; with replicas for the failover tests)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
import redis.asyncio.cluster as aiocluster
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from delivery.redis_batch import batched
from delivery.redis_client import _quick_packing, connect, connect_sync, key_slot, parse_seeds
from delivery.scripts import Step
from tests.cluster import SLOTS, LocalCluster, free_ports

pytestmark = pytest.mark.cluster

# Counts its calls in KEYS[1] and answers with its caller's ARGV[1].
ECHO = "redis.call('INCR', KEYS[1]) return ARGV[1]"
# As ECHO, after keeping Redis busy for ARGV[2] milliseconds (so that a trip is in flight for that long).
SLOW = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat
  local now = redis.call('TIME')
until (now[1] * 1000000 + now[2]) - start >= tonumber(ARGV[2]) * 1000
redis.call('INCR', KEYS[1])
return ARGV[1]
"""
CALLERS = 10


def tags_by_master(cluster: LocalCluster) -> dict[int, str]:
    """A hash tag served by each master, by the master's port (tags chosen by their slot, not by their name)."""
    masters = [node for node in cluster.nodes() if node.role == "master" and node.slots]
    tags: dict[int, str] = {}
    for tag in (f"{{t{number}}}" for number in range(1000)):
        owner = next(node.port for node in masters if node.serves(key_slot(tag)))
        tags.setdefault(owner, tag)
    assert len(tags) == len(masters), "a tag for every master"
    return dict(sorted(tags.items()))


def stats(observers: dict[int, redis.Redis]) -> dict[int, tuple[int, int]]:
    """Each master's own count of the connections it accepted and of the reads it made from its clients."""
    counts = {}
    for port, client in observers.items():
        info: dict[str, Any] = client.info("stats")
        counts[port] = (int(info["total_connections_received"]), int(info["total_reads_processed"]))
    return counts


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
    timeout_s = 1.0
    client = connect(cluster.url, cluster=True, command_timeout_s=timeout_s)
    frozen, other = list(tags)[:2]
    try:
        await client.set(f"{tags[frozen]}k", "v")
        await client.set(f"{tags[other]}k", "v")
        cluster.freeze(frozen)
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await client.get(f"{tags[frozen]}k")
        assert time.monotonic() - started < 2 * timeout_s  # one timeout, not one per retry (a retry takes two)
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


# -- the batcher -------------------------------------------------------------------------------------------------


async def test_calls_of_one_turn_on_three_masters_each_get_their_own_reply_in_one_trip_per_master(
    cluster: LocalCluster, cluster_redis: aiocluster.RedisCluster, tags: dict[int, str]
) -> None:
    script = batched(cluster_redis).register_script(ECHO)
    for tag in tags.values():  # loads the script, opens a connection to each master
        assert await script(keys=[f"{tag}calls"], args=["warm"]) == b"warm"
    observers = {port: cluster.client(port) for port in tags}
    try:
        before = stats(observers)
        replies = await asyncio.gather(
            *(script(keys=[f"{tag}calls"], args=[f"{port}-{i}"]) for i in range(CALLERS) for port, tag in tags.items())
        )
        after = stats(observers)
    finally:
        for observer in observers.values():
            observer.close()

    assert replies == [f"{port}-{i}".encode() for i in range(CALLERS) for port in tags]
    for tag in tags.values():
        assert int(await cluster_redis.get(f"{tag}calls") or 0) == CALLERS + 1
    for port in tags:
        assert after[port][0] == before[port][0], "no new connection"
        assert after[port][1] - before[port][1] - 1 <= 2, "one read as a rule (the second INFO's own read aside)"


async def test_a_call_whose_keys_span_two_slots_fails_alone_with_a_clear_error(
    cluster_redis: aiocluster.RedisCluster, tags: dict[int, str]
) -> None:
    batcher = batched(cluster_redis)
    script = batcher.register_script(ECHO)
    first, second = list(tags.values())[:2]

    replies = await asyncio.wait_for(
        asyncio.gather(
            *(script(keys=[f"{tag}calls"], args=[tag]) for tag in tags.values()),
            script(keys=[f"{first}calls", f"{second}calls"], args=["across"]),
            batcher.command("MGET", f"{first}calls", f"{second}calls"),
            batcher.commands(("INCR", f"{first}n"), ("MGET", f"{first}n", f"{second}n"), ("INCR", f"{first}n")),
            batcher.command("INCR", f"{second}n"),
            return_exceptions=True,
        ),
        timeout=5,
    )

    assert replies[:3] == [tag.encode() for tag in tags.values()]
    for refused in replies[3:6]:
        assert isinstance(refused, RedisClusterException), refused
        assert "all keys must map to the same key slot" in str(refused)
    assert replies[6] == 1
    assert int(await cluster_redis.get(f"{first}n") or 0) == 2  # not a transaction: the group's others ran
    for tag in tags.values():
        assert int(await cluster_redis.get(f"{tag}calls") or 0) == 1


async def test_after_one_master_forgets_its_scripts_every_call_still_runs_once(
    cluster: LocalCluster, cluster_redis: aiocluster.RedisCluster, tags: dict[int, str]
) -> None:
    script = batched(cluster_redis).register_script(ECHO)
    await asyncio.gather(*(script(keys=[f"{tag}calls"], args=["warm"]) for tag in tags.values()))
    forgetful = next(iter(tags))
    with cluster.client(forgetful) as node:
        node.script_flush()  # as a master restarted without the scripts would be

    several = await asyncio.gather(
        *(script(keys=[f"{tag}calls"], args=[f"{port}-{i}"]) for i in range(5) for port, tag in tags.items())
    )
    with cluster.client(forgetful) as node:
        node.script_flush()
    alone = await script(keys=[f"{tags[forgetful]}calls"], args=["alone"])

    assert several == [f"{port}-{i}".encode() for i in range(5) for port in tags]
    assert alone == b"alone"
    for port, tag in tags.items():
        assert int(await cluster_redis.get(f"{tag}calls") or 0) == 1 + 5 + (port == forgetful)


async def test_with_a_master_down_a_step_not_yet_loaded_runs_on_the_masters_still_up(
    cluster: LocalCluster, cluster_redis: aiocluster.RedisCluster, tags: dict[int, str]
) -> None:
    # redis-py's own reload loads a forgotten script on every master: with one down, that fails for every key.
    dead, *alive = tags
    nodes = cluster.nodes()
    for node in nodes:
        with cluster.client(node) as client:
            client.config_set("cluster-require-full-coverage", "no")  # the others keep serving their slots
    try:
        cluster.kill(dead)
        one_by_one = Step.of_text("echo", ECHO).bind(cluster_redis)
        in_turns = batched(cluster_redis).register_script(f"{ECHO} -- batched")
        sync_client = connect_sync(cluster.url, cluster=True)
        try:
            sync_step = Step.of_text("echo", f"{ECHO} -- sync").bind(sync_client)
            answers = [sync_step(keys=[f"{tags[port]}sync"], args=[str(port)]) for port in alive]
        finally:
            sync_client.close()
        answers += [await one_by_one(keys=[f"{tags[port]}bound"], args=[str(port)]) for port in alive]
        answers += await asyncio.gather(*(in_turns(keys=[f"{tags[port]}batched"], args=[str(port)]) for port in alive))
    finally:
        for node in nodes:
            if node.port != dead:
                with cluster.client(node) as client:
                    client.config_set("cluster-require-full-coverage", "yes")

    assert answers == [str(port).encode() for port in alive] * 3


async def test_groups_keep_their_order_on_each_slot(
    cluster_redis: aiocluster.RedisCluster, tags: dict[int, str]
) -> None:
    batcher = batched(cluster_redis)
    first, second, third = tags.values()
    script = batcher.register_script(ECHO)

    one_slot, across, *others = await asyncio.gather(
        batcher.commands(
            ("DEL", f"{first}list"),
            *(("RPUSH", f"{first}list", i) for i in range(10)),
            ("LRANGE", f"{first}list", 0, -1),
        ),
        batcher.commands(
            ("SET", f"{second}k", "a"),
            ("SET", f"{third}k", "b"),
            ("APPEND", f"{second}k", "c"),
            ("GET", f"{third}k"),
            ("GET", f"{second}k"),
        ),
        *(script(keys=[f"{tag}calls"], args=[tag]) for tag in tags.values()),
        batcher.command("GET", f"{first}missing"),
    )

    assert one_slot[1:11] == list(range(1, 11))
    assert one_slot[-1] == [str(i).encode() for i in range(10)]
    assert across == [True, True, 2, b"b", b"ac"]
    assert others == [*(tag.encode() for tag in tags.values()), None]


async def test_a_bad_argument_or_a_failing_command_fails_only_its_own_caller(
    cluster_redis: aiocluster.RedisCluster, tags: dict[int, str]
) -> None:
    batcher = batched(cluster_redis)
    script = batcher.register_script(ECHO)
    first, second, _ = tags.values()
    await cluster_redis.set(f"{second}text", "not a list")

    replies = await asyncio.gather(
        script(keys=[f"{first}calls"], args=["a"]),
        script(keys=[f"{first}calls"], args=[None]),
        batcher.commands(("SET", f"{second}a", "1"), ("SET", f"{second}b", None)),
        batcher.commands(("INCR", f"{second}ran"), ("LPUSH", f"{second}text", "x"), ("INCR", f"{second}ran")),
        script(keys=[f"{second}calls"], args=["b"]),
        return_exceptions=True,
    )

    assert replies[0] == b"a"
    assert isinstance(replies[1], DataError)
    assert isinstance(replies[2], DataError)
    assert isinstance(replies[3], ResponseError)
    assert "WRONGTYPE" in str(replies[3])
    assert replies[4] == b"b"
    assert await cluster_redis.get(f"{second}a") is None  # nothing of the refused group was sent
    assert int(await cluster_redis.get(f"{second}ran") or 0) == 2


# -- faults ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "replicated_cluster", [{"auto_failover": False, "node_timeout_ms": 5000}], ids=["manual-failover"], indirect=True
)
async def test_a_master_that_dies_fails_only_its_own_calls_until_its_replica_takes_over(
    replicated_cluster: LocalCluster,
) -> None:
    # No automatic failover, and a node timeout long enough for the turns before the takeover to run while the
    # cluster still serves the other masters' slots.
    cluster = replicated_cluster
    tags = tags_by_master(cluster)
    dead, *alive = tags
    client = connect(cluster.url, cluster=True)
    script = batched(client).register_script(SLOW)

    async def turn(busy_ms: int) -> list[Any]:
        calls = (script(keys=[f"{tag}calls"], args=[str(port), busy_ms]) for port, tag in tags.items())
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=10)

    try:
        await turn(0)
        replica = cluster.replica_of(dead)
        with cluster.client(dead) as node:
            assert node.execute_command("WAIT", 1, 2000) == 1  # the replica holds the count

        cluster.kill(dead)
        on_open_connections = await turn(0)  # the dead master's connection fails while it reads
        on_new_connections = await turn(200)  # now its connection is refused, while the others are busy
        cluster.failover(replica)
        after = await turn(0)
        counts = [int(await client.get(f"{tag}calls") or 0) for tag in tags.values()]
    finally:
        await client.aclose()

    for during in (on_open_connections, on_new_connections):
        assert isinstance(during[0], RedisConnectionError), during[0]
        assert during[1:] == [str(port).encode() for port in alive]
    assert after == [str(port).encode() for port in tags]
    assert counts == [2, 4, 4]  # each call ran once; the dead master's never (its replica had the first)


@pytest.mark.slow
async def test_a_client_follows_a_manual_failover_and_a_takeover(replicated_cluster: LocalCluster) -> None:
    cluster = replicated_cluster
    tag, other = list(tags_by_master(cluster).values())[:2]
    client = connect(cluster.url, cluster=True)
    batcher = batched(client)
    try:
        await client.set(f"{tag}k", "v")
        await asyncio.gather(batcher.command("GET", f"{tag}k"), batcher.command("GET", f"{other}k"))
        old_master = cluster.master_for_slot(key_slot(tag))
        replica = cluster.replica_of(old_master)

        cluster.failover(replica)  # coordinated: the old master now answers MOVED for the slot
        assert cluster.master_for_slot(key_slot(tag)).port == replica.port
        batched_replies = await asyncio.gather(  # a turn's trip to the old master: each call follows its slot
            batcher.command("GET", f"{tag}k"),
            batcher.commands(("INCR", f"{tag}m"), ("INCR", f"{tag}m")),
            batcher.command("GET", f"{other}k"),
        )
        assert batched_replies == [b"v", [1, 2], None]
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
