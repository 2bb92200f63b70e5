"""The webhook bench on a Redis Cluster (``--cluster``): the throughput phase again, on ``--masters`` masters, set
beside the standalone Redis's of the same run.

Both halves have the same receiver, driver, tenants and broker. A cluster cannot hold Dramatiq's queue, so the
broker is a standalone Redis of its own (``RELAY_BROKER_URL``); the standalone half uses it too, so that only the
storage differs, and it is flushed between them. Its CPU and commands are counted apart from the storage's.

A destination is a tenant and the receiver's origin, and a task with a webhook lives in its destination's
partition: one tenant would put every task on one master. So both halves submit for ``--tenants`` tenants in
turn, named so that their destinations fall evenly over the partitions (as many destinations do on average; 32
named at random would leave a third of them to each master give or take a quarter).

  spread_tenants     the tenants, placed
  switch_to_cluster  stop the standalone Relay and its Redis, start the cluster, point Relay at it
  cluster_figures    each master's keys, commands and CPU, their spread, and the projection to more masters
  stop_cluster       stop the cluster half, the broker with it
"""

from __future__ import annotations

import argparse
from typing import Any

import msgspec
import redis

from delivery import keys
from delivery.destinations import destination_id
from scripts.benchmark.meter import NODE_PREFIX, BrokerCpuMeter
from scripts.benchmark.redis_cluster import SlotRange, start_cluster
from scripts.benchmark.stack import Stack
from scripts.benchmark.webhooks.scaling import SPREAD_TOLERANCE, partitions_held, project, spread

# Tenants both halves submit for in turn.
DEFAULT_TENANTS = 32
DEFAULT_MASTERS = 3
# Relay's own default on a cluster.
DEFAULT_PARTITIONS = keys.CLUSTER_PARTITIONS
# The standalone half's Relay processes and Redis, stopped before the cluster starts (in this order).
STANDALONE_SERVICES = ("worker", "api", "redis")
# The stack's names of the cluster half's Relay processes start with this (their logs kept apart).
PREFIX = "cluster-"


class ClusterCpuMeter(BrokerCpuMeter):
    """The broker's columns for the cluster half: ``cluster-api`` counts as ``api`` and so on."""

    @staticmethod
    def group(service: str) -> str:
        return BrokerCpuMeter.group(service.removeprefix(PREFIX))


def spread_tenants(origin: str, count: int, partitions: int) -> dict[str, str]:
    """``count`` tenants (name -> API key) whose destinations at ``origin`` fall evenly over a store of
    ``partitions`` partitions: tenant *i*'s in partition ``i * partitions // count``.

    A destination's partition is named by its id, a hash of the tenant and the origin; each tenant's name is the
    first ``t<i>-<n>`` whose destination lands where it should.
    """
    layout = keys.Layout.of(partitions, cluster=True)
    tenants = {}
    for i in range(count):
        wanted = i * partitions // count
        n = 0
        while layout.for_id(destination_id(f"t{i}-{n}", origin)).index != wanted:
            n += 1
        tenants[f"t{i}-{n}"] = f"key-t{i}-{n}"
    return tenants


def switch_to_cluster(stack: Stack, args: argparse.Namespace, broker_url: str) -> list[str]:
    """Stop the standalone Relay and its Redis, flush the broker, start a cluster of ``args.masters`` masters and
    point Relay's environment at it; return the masters' addresses.

    Raises:
        RuntimeError: the cluster did not start (see :func:`scripts.benchmark.redis_cluster.start_cluster`).
    """
    for name in STANDALONE_SERVICES:
        if name in stack.services:
            stack.services.pop(name).stop()
    with redis.Redis.from_url(broker_url, socket_timeout=5) as broker:
        broker.flushall()  # no message, heartbeat or queue of the standalone half's is left
    nodes = start_cluster(stack, args.masters)
    stack.env.update(
        RELAY_REDIS_MODE="cluster",
        RELAY_REDIS_URL=",".join(f"redis://{address}" for address in nodes),  # every master a seed
        RELAY_PARTITIONS=str(args.partitions),
    )
    return nodes


def stop_cluster(stack: Stack) -> None:
    """Stop the cluster half's Relay processes, the cluster's nodes and the broker: their part of the run is over."""
    names = [f"{PREFIX}worker", f"{PREFIX}api"]
    names += [name for name in stack.services if name.startswith(NODE_PREFIX)]
    for name in [*names, "broker"]:
        if name in stack.services:
            stack.services.pop(name).stop()


def cluster_figures(
    thr: dict[str, Any], served: dict[str, list[SlotRange]], node_keys: dict[str, int], args: argparse.Namespace
) -> dict[str, Any]:
    """Each master's slots, partitions, keys, commands and Redis CPU per task in the throughput phase ``thr``; how
    evenly the keys, commands and CPU spread; and the projection of tasks per second to more or fewer masters."""
    tasks = max(1, thr["delivered"])
    cpu = thr["cpu_us_per_task"]
    held = partitions_held(served, args.partitions)
    node_cpu = {address: cpu.get(NODE_PREFIX + address.rsplit(":", 1)[1], 0) for address in served}
    nodes = [
        {
            "address": address,
            "slots": sum(last - first + 1 for first, last in ranges),
            "partitions": held[address],
            "keys": node_keys.get(address, 0),
            "commands_per_task": round(thr["redis_calls_by_node"].get(address, 0) / tasks, 1),
            "cpu_us_per_task": node_cpu[address],
        }
        for address, ranges in sorted(served.items())
    ]
    projection = project(
        node_us=node_cpu,
        node_partitions=held,
        partitions=args.partitions,
        api_us=cpu["api"],
        worker_us=cpu["worker"],
        broker_us=cpu.get("broker", 0),
        api_processes=args.api_workers,
        worker_processes=args.worker_processes,
    )
    return {
        "nodes": nodes,
        "spread": {
            "tolerance": SPREAD_TOLERANCE,
            **{
                figure: msgspec.to_builtins(spread({n["address"]: n[key] for n in nodes}))
                for figure, key in (("keys", "keys"), ("commands", "commands_per_task"), ("cpu", "cpu_us_per_task"))
            },
        },
        "projection": msgspec.to_builtins(projection),
    }


def keys_held(addresses: list[str]) -> dict[str, int]:
    """DBSIZE of each node."""
    held = {}
    for address in addresses:
        host, port = address.rsplit(":", 1)
        with redis.Redis(host=host, port=int(port), socket_timeout=5) as client:
            held[address] = int(client.dbsize())
    return held
