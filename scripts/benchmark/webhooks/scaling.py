"""What the cluster run's figures say past the masters it ran on: how evenly the work spread over them, and how many
tasks a second more or fewer masters would carry.

Pure functions of measured figures (CPU µs per task of each process kind and of each master, partitions held),
tested without a cluster. The projection assumes what the layout promises and the run measures:

- a task costs the cluster's Redis the same CPU whatever the number of masters (every step touches one partition,
  on one node), spread over the masters as the partitions are (each master's share is the partitions it holds,
  times the skew measured: how much more per partition the busiest master of the run spent than the mean);
- one Redis, and one API or worker process, spends one core at most (a Redis's commands run on one thread; a
  Python process runs on one core at a time); each has a core of its own (other hosts, not this box);
- the broker is one standalone Redis, beside the cluster, whatever the number of masters.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence

import msgspec
from redis.crc import REDIS_CLUSTER_HASH_SLOTS

from delivery import keys
from delivery.redis_client import key_slot

# How far a master's share of the keys, commands or CPU may stray from the mean and still count as even.
SPREAD_TOLERANCE = 0.15
# The masters the projection is printed for.
PROJECTED_MASTERS = (1, 2, 3, 6, 12)
# What one core does in a second, in the unit CPU per task is measured in.
CORE_US = 1_000_000

SlotRange = tuple[int, int]


class Share(msgspec.Struct, frozen=True):
    """One master's part of a total: its ``value``, its ``share`` of the sum, and its ``deviation`` from the mean
    (+0.1: a tenth above what each master would have, were all equal)."""

    value: float
    share: float
    deviation: float


class Limit(enum.Enum):
    """What caps the tasks per second first: the core of a master or of the broker's Redis, or the cores of the
    API or worker processes."""

    MASTER = "a master"
    BROKER = "the broker"
    API = "API processes"
    WORKER = "worker processes"


class Row(msgspec.Struct, frozen=True):
    """The projection at ``masters`` masters.

    ``busiest_share``: the busiest master's part of the cluster's Redis CPU. ``masters_per_s``: the tasks a second
    at which it spends one core. ``per_s``: the lowest of that, the broker's and the API and worker processes'
    bounds (with as many processes as the run had), and ``limit`` names it. ``api_processes`` and
    ``worker_processes``: as many as it takes to keep up with the Redis bound (the masters' or the broker's).
    A bound is None where the run measured no CPU for it.
    """

    masters: int
    busiest_share: float
    masters_per_s: float | None
    per_s: float | None
    limit: Limit | None
    api_processes: int | None
    worker_processes: int | None


class Projection(msgspec.Struct, frozen=True):
    """Tasks per second against masters (:func:`project`): the bounds that do not depend on the masters, a row per
    number of masters, and the masters it takes before the broker, not a master, is the bound."""

    redis_us_per_task: float  # the cluster's Redis CPU per task, every master's added up
    skew: float  # the busiest master's CPU per partition over the mean's (1.0: exactly its partitions' share)
    broker_per_s: float | None
    api_per_s: float | None
    worker_per_s: float | None
    rows: list[Row]
    masters_for_broker: int | None  # None: the broker's CPU was not measured, or no number of masters reaches it


def spread(values: Mapping[str, float]) -> dict[str, Share]:
    """Each master's share of ``values`` (keys held, commands run, CPU spent) and its deviation from the mean."""
    total = sum(values.values())
    if not values or total <= 0:
        return {name: Share(value, 0.0, 0.0) for name, value in values.items()}
    mean = total / len(values)
    return {name: Share(value, value / total, value / mean - 1) for name, value in values.items()}


def worst_deviation(shares: Mapping[str, Share]) -> float:
    """The largest deviation from the mean either way (0.12: some master is 12 % off)."""
    return max((abs(s.deviation) for s in shares.values()), default=0.0)


def even_slot_ranges(masters: int) -> list[SlotRange]:
    """The slots of each of ``masters`` masters as ``redis-cli --cluster create`` splits them: equal ranges in
    order, each ending where the running total rounds to."""
    if masters < 1:
        raise ValueError("a cluster has one master at least")
    per_master = REDIS_CLUSTER_HASH_SLOTS / masters
    ranges: list[SlotRange] = []
    first, cursor = 0, 0.0
    for n in range(masters):
        last = REDIS_CLUSTER_HASH_SLOTS - 1 if n == masters - 1 else round(cursor + per_master - 1)
        last = max(first, min(last, REDIS_CLUSTER_HASH_SLOTS - 1))
        ranges.append((first, last))
        first, cursor = last + 1, cursor + per_master
    return ranges


def partitions_held(served: Mapping[str, Sequence[SlotRange]], partitions: int) -> dict[str, int]:
    """How many of a store's ``partitions`` each master holds, from the slot ranges it serves (a partition is one
    slot: its hash tag's)."""
    slots = [key_slot(p.prefix) for p in keys.Layout.of(partitions, cluster=True).partitions]
    return {
        master: sum(1 for slot in slots if any(first <= slot <= last for first, last in ranges))
        for master, ranges in served.items()
    }


def project(
    *,
    node_us: Mapping[str, float],
    node_partitions: Mapping[str, int],
    partitions: int,
    api_us: float,
    worker_us: float,
    broker_us: float,
    api_processes: int,
    worker_processes: int,
    masters: Sequence[int] = PROJECTED_MASTERS,
) -> Projection:
    """Tasks per second against the number of masters, from one run's CPU per task.

    Args:
        node_us: each master's Redis CPU per task, µs (the run's masters).
        node_partitions: the partitions each of them held.
        partitions: the store's partitions.
        api_us, worker_us, broker_us: the API's, the workers' and the broker's Redis CPU per task, µs.
        api_processes, worker_processes: the API and worker processes of the run (a core each at most).
        masters: the numbers of masters to project for.
    """
    redis_us = sum(node_us.values())
    skew = 1.0
    if redis_us > 0:
        skew = max(
            (us / redis_us) / (node_partitions[node] / partitions)
            for node, us in node_us.items()
            if node_partitions.get(node)
        )

    def busiest(count: int) -> float:
        held = partitions_held({str(n): [r] for n, r in enumerate(even_slot_ranges(count))}, partitions)
        return min(1.0, max(held.values()) / partitions * skew)

    def masters_bound(count: int) -> float | None:
        return _bound(redis_us * busiest(count), 1)

    broker_per_s = _bound(broker_us, 1)
    api_per_s, worker_per_s = _bound(api_us, api_processes), _bound(worker_us, worker_processes)
    rows = []
    for count in masters:
        bounds = {
            Limit.MASTER: masters_bound(count),
            Limit.BROKER: broker_per_s,
            Limit.API: api_per_s,
            Limit.WORKER: worker_per_s,
        }
        measured = {limit: per_s for limit, per_s in bounds.items() if per_s is not None}
        limit = min(measured, key=measured.__getitem__) if measured else None
        redis_bound = _least(bounds[Limit.MASTER], broker_per_s)
        rows.append(
            Row(
                masters=count,
                busiest_share=round(busiest(count), 4),
                masters_per_s=_round(bounds[Limit.MASTER]),
                per_s=_round(measured[limit]) if limit is not None else None,
                limit=limit,
                api_processes=_processes(redis_bound, api_us),
                worker_processes=_processes(redis_bound, worker_us),
            )
        )
    masters_for_broker = None
    if broker_per_s is not None:
        masters_for_broker = next(
            (n for n in range(1, partitions + 1) if (m := masters_bound(n)) is None or m >= broker_per_s), None
        )
    return Projection(
        redis_us_per_task=round(redis_us, 1),
        skew=round(skew, 3),
        broker_per_s=_round(broker_per_s),
        api_per_s=_round(api_per_s),
        worker_per_s=_round(worker_per_s),
        rows=rows,
        masters_for_broker=masters_for_broker,
    )


def _bound(us_per_task: float, cores: int) -> float | None:
    """Tasks a second at which ``cores`` cores are all spent, or None where no CPU was measured."""
    return cores * CORE_US / us_per_task if us_per_task > 0 else None


def _least(*bounds: float | None) -> float | None:
    known = [b for b in bounds if b is not None]
    return min(known) if known else None


def _processes(per_s: float | None, us_per_task: float) -> int | None:
    """Processes of a core each that ``per_s`` tasks a second keep busy."""
    if per_s is None or us_per_task <= 0:
        return None
    return max(1, math.ceil(per_s * us_per_task / CORE_US))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value)
