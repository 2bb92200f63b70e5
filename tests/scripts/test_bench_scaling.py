"""The cluster bench's arithmetic: how the slots and partitions fall on the masters, how evenly a figure spreads,
the projection of tasks per second to more masters, and the tenants placed to spread their tasks."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence

import pytest

from delivery import keys
from delivery.destinations import destination_id
from delivery.redis_client import key_slot
from scripts.benchmark.webhooks.on_cluster import spread_tenants
from scripts.benchmark.webhooks.scaling import (
    SPREAD_TOLERANCE,
    Limit,
    Projection,
    even_slot_ranges,
    partitions_held,
    project,
    spread,
    worst_deviation,
)


def held_on(masters: int, partitions: int) -> list[int]:
    return list(partitions_held({str(n): [r] for n, r in enumerate(even_slot_ranges(masters))}, partitions).values())


def test_the_slots_split_as_redis_cli_splits_them_for_three_masters() -> None:
    assert even_slot_ranges(3) == [(0, 5460), (5461, 10922), (10923, 16383)]


@pytest.mark.parametrize("masters", [1, 2, 3, 5, 6, 7, 12])
def test_every_slot_has_one_master_and_the_ranges_are_even(masters: int) -> None:
    ranges = even_slot_ranges(masters)
    assert ranges[0][0] == 0
    assert ranges[-1][1] == 16383
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))
    sizes = [last - first + 1 for first, last in ranges]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    ("masters", "partitions", "fewest", "most"),
    [(2, 64, 32, 32), (3, 64, 21, 22), (8, 64, 8, 8), (3, 16, 5, 6), (12, 64, 4, 6)],
)
def test_each_master_holds_the_partitions_whose_slots_it_serves(
    masters: int, partitions: int, fewest: int, most: int
) -> None:
    # A partition's tag lies anywhere in its own range of slots, so a master's edge can fall either side of it: past
    # a few masters more partitions would even them out.
    held = held_on(masters, partitions)
    assert sum(held) == partitions
    assert (min(held), max(held)) == (fewest, most)


def test_spread_gives_each_master_its_share_and_its_distance_from_the_mean() -> None:
    shares = spread({"a": 100, "b": 100, "c": 130})
    assert sum(s.share for s in shares.values()) == pytest.approx(1)
    assert shares["a"].share == pytest.approx(100 / 330)
    assert shares["c"].deviation == pytest.approx(130 / 110 - 1)  # 18 % over the mean: uneven
    assert shares["a"].deviation == pytest.approx(100 / 110 - 1)
    assert worst_deviation(shares) > SPREAD_TOLERANCE
    assert worst_deviation(spread({"a": 100, "b": 108, "c": 93})) <= SPREAD_TOLERANCE


def test_spread_of_nothing_measured_is_no_share_and_no_deviation() -> None:
    shares = spread({"a": 0, "b": 0})
    assert [(s.share, s.deviation) for s in shares.values()] == [(0.0, 0.0), (0.0, 0.0)]


def projected(masters: Sequence[int]) -> Projection:
    """Three masters of 64 partitions that each spent 100 µs of Redis CPU per task; the broker's bound 20,000
    tasks/s, the API's and the workers' 25,000 with the processes given."""
    return project(
        node_us={"a": 100.0, "b": 100.0, "c": 100.0},
        node_partitions=dict(zip("abc", held_on(3, 64), strict=True)),
        partitions=64,
        api_us=200.0,
        worker_us=400.0,
        broker_us=50.0,
        api_processes=5,
        worker_processes=10,
        masters=masters,
    )


def test_one_master_carries_a_core_of_the_whole_cluster_cost() -> None:
    row = projected([1]).rows[0]
    assert row.busiest_share == 1.0
    assert row.masters_per_s == round(1_000_000 / 300)
    assert (row.per_s, row.limit) == (row.masters_per_s, Limit.MASTER)
    # 3,333 tasks/s keep one API process (0.67 of a core) and two worker processes (1.33) busy.
    assert (row.api_processes, row.worker_processes) == (1, 2)


def test_the_busiest_master_bounds_the_cluster_by_its_partitions_and_the_skew_measured() -> None:
    projection = projected([3])
    most = max(held_on(3, 64))
    # The master with the fewest partitions spent as much as the others: it is the skewed one.
    skew = (1 / 3) / (min(held_on(3, 64)) / 64)
    assert projection.skew == pytest.approx(skew, abs=1e-3)
    assert projection.rows[0].masters_per_s == round(1_000_000 / (300 * most / 64 * skew))


def test_past_enough_masters_the_broker_limits_and_the_count_of_masters_says_where() -> None:
    projection = projected(range(1, 13))
    assert projection.broker_per_s == 20_000
    assert (projection.api_per_s, projection.worker_per_s) == (25_000, 25_000)
    rates = [row.per_s for row in projection.rows]
    assert rates == sorted(rates)  # more masters never carry less
    assert projection.rows[0].limit is Limit.MASTER
    assert projection.rows[-1].limit is Limit.BROKER
    assert projection.rows[-1].per_s == 20_000
    needed = projection.masters_for_broker
    assert needed is not None
    enough, fewer = projection.rows[needed - 1], projection.rows[needed - 2]
    assert (enough.masters_per_s or 0) >= 20_000
    assert (fewer.masters_per_s or 0) < 20_000
    assert fewer.limit is Limit.MASTER


def test_a_run_that_measured_no_cpu_projects_no_bound() -> None:
    projection = project(
        node_us={"a": 0, "b": 0, "c": 0},
        node_partitions={"a": 21, "b": 21, "c": 22},
        partitions=64,
        api_us=0,
        worker_us=0,
        broker_us=0,
        api_processes=1,
        worker_processes=1,
        masters=[1, 3],
    )
    assert [(r.per_s, r.limit, r.api_processes) for r in projection.rows] == [(None, None, None)] * 2
    assert projection.masters_for_broker is None


def test_the_tenants_destinations_fall_evenly_over_the_partitions_and_the_masters() -> None:
    origin = "http://127.0.0.1:41234"
    tenants = spread_tenants(origin, 32, 64)
    assert len(tenants) == 32
    assert len(set(tenants.values())) == 32
    layout = keys.Layout.of(64, cluster=True)
    placed = [layout.for_id(destination_id(tenant, origin)).index for tenant in tenants]
    assert placed == list(range(0, 64, 2))
    slots = even_slot_ranges(3)
    on_master = Counter(
        next(n for n, (first, last) in enumerate(slots) if first <= key_slot(layout.partitions[i].prefix) <= last)
        for i in placed
    )
    assert worst_deviation(spread({str(k): v for k, v in on_master.items()})) <= SPREAD_TOLERANCE
