"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from dramatiq.brokers.redis import RedisBroker
from litestar import Response, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_200_OK
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from delivery import cluster_view, figures, metrics
from delivery.store_refusals import WriteRefusal, refusal_of
from schemas.cluster import ClusterView
from service.api.auth import Principal, require_operator
from service.api.openapi import OPERATOR_ONLY, errors
from service.api.state import ApiState
from service.broker import QUEUE

log = logging.getLogger("relay.api")

# /ready gives up on a dependency that takes longer than this to answer.
READY_TIMEOUT_S = 0.8


@get(
    "/health",
    operation_id="health",
    response_description="The process runs",
    tags=["health"],
    summary="200 while the process runs",
    exclude_from_auth=True,
)
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/ready",
    operation_id="ready",
    response_description="Ready: every check says ok",
    tags=["health"],
    summary="200 when Redis and the broker answer and the store has its data and takes new work, else 503 with the reason",
    responses={
        503: ResponseSpec(
            data_container=dict[str, str],
            description="Not ready: each check says what it found (`ok` or what is wrong)",
            generate_examples=False,
        )
    },
)
async def ready(state_: NamedDependency[ApiState]) -> Response[dict[str, str]]:
    epoch_problem: str | None = None

    async def redis_check() -> str:
        nonlocal epoch_problem
        try:
            # Reading the store's epoch is the ping.
            epoch = await asyncio.wait_for(state_.epoch.state(), READY_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as exc:
            refusal = refusal_of(exc)  # a failed save refuses even PING (MISCONF)
            return f"refusing writes: {refusal.cause}" if refusal else f"unavailable: {type(exc).__name__}"
        epoch_problem = epoch.problem
        return "ok"

    async def store_check() -> str:
        with contextlib.suppress(TimeoutError):  # a Redis that does not answer is redis_check's to say
            await asyncio.wait_for(state_.store_watch.refresh(), READY_TIMEOUT_S)
        return state_.store_watch.describe()

    async def broker_check() -> str:
        if state_.settings.broker_in_storage:
            return await redis_task  # the same Redis: one answer for both
        try:
            await state_.broker_check(READY_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 (any failure of the broker client means not ready; the answer names it)
            return f"unavailable: {type(exc).__name__}"
        return "ok"

    redis_task = asyncio.ensure_future(redis_check())
    redis_state, broker_state, store_state = await asyncio.gather(redis_task, broker_check(), store_check())
    # A store that lost its data says so before whether it is full: the loss needs an operator.
    checks = {"redis": redis_state, "broker": broker_state, "store": epoch_problem or store_state}
    healthy = all(v == "ok" for v in checks.values())
    return Response({"status": "ready" if healthy else "not ready", **checks}, status_code=200 if healthy else 503)


@get(
    "/v1/ops/cluster",
    operation_id="ops_cluster_get",
    response_description="The storage's nodes, partitions and the processes alive",
    tags=["operations"],
    security=OPERATOR_ONLY,
    summary="The storage's nodes, how Relay's partitions sit on them, the work owed on each, and the processes alive",
    responses=errors(403, why={403: "A tenant's API key where the admin token is needed"}),
)
async def cluster(state_: NamedDependency[ApiState], principal: NamedDependency[Principal]) -> ClusterView:
    require_operator(principal)
    return await cluster_view.read(
        state_.redis, state_.destinations, url=state_.settings.storage_url, cluster=state_.settings.cluster
    )


@post(
    "/v1/ops/store/acknowledge",
    operation_id="ops_store_acknowledge",
    response_description="Whether a loss was there to acknowledge",
    tags=["operations"],
    security=OPERATOR_ONLY,
    summary="Acknowledge that the store lost its data, so that /ready may answer 200 again",
    status_code=HTTP_200_OK,
    responses=errors(403, why={403: "A tenant's API key where the admin token is needed"}),
)
async def acknowledge_store_loss(
    state_: NamedDependency[ApiState], principal: NamedDependency[Principal]
) -> dict[str, bool]:
    require_operator(principal)
    acknowledged = await state_.epoch.acknowledge()
    if acknowledged:
        log.warning("the loss of the store's data was acknowledged; /ready answers 200 again")
    return {"acknowledged": acknowledged}


class _Snapshot:
    """A prometheus_client collector over values already read from Redis."""

    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        yield from self._families


@get(
    "/metrics",
    operation_id="metrics",
    response_description="Prometheus text exposition format",
    tags=["health"],
    summary="Prometheus text exposition",
    description="Cluster-wide figures (tasks, deliveries, dead letters, destinations by state, latency) and this "
    "process's own (live connections, the store's room).",
    media_type=CONTENT_TYPE_LATEST,
    responses=errors(503, anonymous=True),
)
async def prometheus_metrics(state_: NamedDependency[ApiState]) -> Response[bytes]:
    stats, latency, dead, due, owed = await figures.gather(
        state_.redis,
        [
            lambda p: ("HGETALL", p.stats),
            lambda p: ("HGETALL", p.latency),
            lambda p: ("ZCARD", p.dead_letters),
            lambda p: ("ZCARD", p.due),
            lambda p: ("ZCARD", p.owed_tasks),
        ],
    )
    destinations = await state_.destinations.counts()
    queued = None
    if isinstance(state_.broker, RedisBroker):
        queued = int(await state_.redis.llen(f"{state_.broker.namespace}:{QUEUE}"))
    families = list(
        metrics.families(
            stats, latency, dead_letters=dead, due=due, queued=queued, owed=owed, destinations=destinations
        )
    )
    # This process's own, unlike the cluster-wide figures above (each of `relay api --workers N` counts its own).
    connections = GaugeMetricFamily(
        "relay_live_connections", "WebSockets and event streams open on this API process", labels=["channel"]
    )
    connections.add_metric(["websocket"], sum(state_.ws_clients.values()))
    connections.add_metric(["sse"], state_.sse_streams)
    families.append(connections)
    received = CounterMetricFamily(
        "relay_live_events_received",
        "Live events this API process received from Redis (on a cluster: only those of the tasks it follows)",
    )
    received.add_metric([], state_.hub.events_received)
    families.append(received)
    followed = GaugeMetricFamily("relay_live_tasks_followed", "Tasks this API process's sockets and streams follow")
    followed.add_metric([], state_.hub.tasks_followed)
    families.append(followed)
    families.extend(_store_families(state_))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _store_families(state_: ApiState) -> list[Any]:
    """The store's room as this API process last read it, and the submissions it refused (alert on
    ``relay_store_refusing == 1``, or on used against max before that)."""
    watch = state_.store_watch
    watch.refusal()  # a reading more than a second old starts a new one: an idle node's gauges do not go stale
    used = GaugeMetricFamily("relay_store_used_memory_bytes", "Redis used_memory, as last read (about once a second)")
    used.add_metric([], watch.used_estimate_bytes)
    limit = GaugeMetricFamily("relay_store_maxmemory_bytes", "Redis maxmemory (0: no limit), as last read")
    limit.add_metric([], watch.reading.max_bytes)
    refusing = GaugeMetricFamily(
        "relay_store_refusing",
        "1 while the store takes no new work, by reason (full, misconf, readonly, noreplicas)",
        labels=["reason"],
    )
    refused = CounterMetricFamily(
        "relay_submissions_refused", "Submissions this API process answered 503 because of the store", labels=["reason"]
    )
    for refusal in WriteRefusal:
        refusing.add_metric([refusal.value], 1 if watch.refusing is refusal else 0)
        refused.add_metric([refusal.value], watch.refused[refusal])
    return [used, limit, refusing, refused]
