"""What ``GET /v1/ops/cluster`` shows: the storage's nodes, how Relay's partitions sit on them, the work owed on
each, and the processes alive."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from delivery import keys, shares
from delivery.destinations import DestinationStore
from delivery.redis_client import address_of, as_text, node_url
from schemas.cluster import ClusterView, StorageNode

SLOTS = 16384
# A node that does not answer INFO in this long is shown down.
NODE_TIMEOUT_S = 1.0


def partition_slot(partition: keys.Partition) -> int | None:
    return None if partition.tag is None else key_slot(partition.tag.encode())


async def owed_by_partition(
    redis: aioredis.Redis, destinations: DestinationStore
) -> tuple[list[int | None], list[int | None]]:
    """Owed tasks and owed webhooks of each partition, in partition order; None for a partition that does not
    answer (its master down: the view is wanted most then)."""
    parts = keys.partitions()

    async def owed_tasks(p: keys.Partition) -> int | None:
        try:
            return int(await redis.zcard(p.owed_tasks))
        except (RedisError, RedisClusterException, OSError):
            return None

    async def owed_webhooks(p: keys.Partition) -> int | None:
        try:
            return (await destinations.counts_in(p)).owed
        except (RedisError, RedisClusterException, OSError):
            return None

    tasks = await asyncio.gather(*(owed_tasks(p) for p in parts))
    webhooks = await asyncio.gather(*(owed_webhooks(p) for p in parts))
    return list(tasks), list(webhooks)


def _total(values: list[int | None]) -> int | None:
    """The sum, or None when a value is unknown."""
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _parse_nodes(raw: Any) -> list[dict[str, Any]]:
    """``CLUSTER NODES`` as a list of {address, id, flags, master_id, ranges}, parsed or as text."""
    text = as_text(raw) if isinstance(raw, bytes | str) else None
    if text is None:  # redis-py parsed it: {address: {node_id, flags, master_id, slots, ...}}
        out = []
        for address, node in dict(raw).items():
            ranges = [[int(r[0]), int(r[-1])] for r in node.get("slots", []) if r]
            out.append(
                {
                    "address": as_text(address),
                    "id": node.get("node_id"),
                    "flags": set(as_text(node.get("flags", "")).split(",")),
                    "master_id": node.get("master_id"),
                    "ranges": ranges,
                }
            )
        return out
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        ranges = []
        for item in fields[8:]:
            if item.startswith("["):
                continue  # a slot being migrated
            low, _, high = item.partition("-")
            ranges.append([int(low), int(high or low)])
        nodes.append(
            {
                "address": fields[1].split("@")[0],
                "id": fields[0],
                "flags": set(fields[2].split(",")),
                "master_id": fields[3],
                "ranges": ranges,
            }
        )
    return nodes


async def _cluster_nodes(redis: aioredis.Redis, url: str) -> Any:
    """``CLUSTER NODES`` from the client's node, else from the first seed that answers (a node may be down)."""
    try:
        return await redis.execute_command("CLUSTER NODES")  # type: ignore[no-untyped-call]
    except (RedisError, RedisClusterException, OSError):
        pass
    for seed in url.split(","):
        client = aioredis.Redis.from_url(
            seed.strip(), socket_timeout=NODE_TIMEOUT_S, socket_connect_timeout=NODE_TIMEOUT_S
        )
        try:
            return await asyncio.wait_for(client.execute_command("CLUSTER", "NODES"), NODE_TIMEOUT_S)  # type: ignore[no-untyped-call]
        except (RedisError, OSError, TimeoutError):
            continue
        finally:
            await client.aclose()
    return ""


async def _info(url: str, address: str) -> dict[str, Any] | None:
    """INFO of the node at ``address``, with the credentials of ``url`` (a seed's); None when it does not answer."""
    client = aioredis.Redis.from_url(
        node_url(url, address), socket_timeout=NODE_TIMEOUT_S, socket_connect_timeout=NODE_TIMEOUT_S
    )
    try:
        return dict(await asyncio.wait_for(client.info(), NODE_TIMEOUT_S))
    except (RedisError, OSError, TimeoutError):
        return None
    finally:
        await client.aclose()


def _figures(node: StorageNode, info: dict[str, Any] | None) -> StorageNode:
    if info is None:
        node.up = False
        return node
    db0 = info.get("db0")
    node.keys = int(db0.get("keys", 0)) if isinstance(db0, dict) else 0
    node.memory_bytes = int(info.get("used_memory", 0))
    node.commands_per_s = int(info.get("instantaneous_ops_per_sec", 0))
    return node


async def read(redis: aioredis.Redis, destinations: DestinationStore, *, url: str, cluster: bool) -> ClusterView:
    """The view, read now. ``url``: the storage URL (a cluster's seeds), whose credentials reach each node."""
    parts = keys.partitions()
    owed_tasks, owed_webhooks = await owed_by_partition(redis, destinations)
    workers, api_nodes = await _members(redis, shares.WORKERS), await _members(redis, shares.API_NODES)
    if not cluster:
        info = dict(await redis.info())
        node = StorageNode(
            address=address_of(url),
            role="master" if info.get("role") == "master" else "replica",
            up=True,
            slots=SLOTS,
            partitions=len(parts),
            owed_tasks=_total(owed_tasks),
            owed_webhooks=_total(owed_webhooks),
        )
        return ClusterView(
            mode="standalone",
            partitions=len(parts),
            nodes=[_figures(node, info)],
            workers=workers,
            api_nodes=api_nodes,
        )
    raw = await _cluster_nodes(redis, url)
    found = _parse_nodes(raw)
    by_id = {n["id"]: n["address"] for n in found}
    seeds = url.split(",")
    infos = await asyncio.gather(*(_info(seeds[0].strip(), n["address"]) for n in found))
    nodes: list[StorageNode] = []
    for n, node_info in zip(found, infos, strict=True):
        master = "master" in n["flags"]
        held = [p for p in range(len(parts)) if _holds(n["ranges"], partition_slot(parts[p]))]
        node = StorageNode(
            address=n["address"],
            role="master" if master else "replica",
            up="fail" not in n["flags"] and "fail?" not in n["flags"],
            master=None if master else by_id.get(n["master_id"]),
            slots=sum(high - low + 1 for low, high in n["ranges"]),
            partitions=len(held),
            owed_tasks=_total([owed_tasks[p] for p in held]),
            owed_webhooks=_total([owed_webhooks[p] for p in held]),
        )
        nodes.append(_figures(node, node_info) if node.up else node)
    nodes.sort(key=lambda n: (n.master or n.address, n.role != "master", n.address))
    return ClusterView(mode="cluster", partitions=len(parts), nodes=nodes, workers=workers, api_nodes=api_nodes)


async def _members(redis: aioredis.Redis, key: str) -> list[str] | None:
    """The processes alive in ``key``; None when its slot's master is away (not known, which is not none)."""
    try:
        return await shares.members(redis, key)
    except (RedisError, RedisClusterException, OSError):
        return None


def _holds(ranges: Sequence[Sequence[int]], slot: int | None) -> bool:
    return slot is not None and any(low <= slot <= high for low, high in ranges)
