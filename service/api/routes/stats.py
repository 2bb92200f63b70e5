"""``GET /v1/stats``: figures for dashboards, read from counters Relay keeps as it goes.

One computation is a handful of O(1) reads (the counters, a few set sizes) plus one Lua step that counts the
caller's destinations (about 3 ms of Redis for a thousand); each API process answers from its last computation
for a scope for up to ``FRESH_FOR_S``, so any number of consoles polling every second cost one a second. Rates
over the last minute come from snapshots of the counters that the calls themselves keep: at most one every
``SNAPSHOT_EVERY_S`` per scope (every tenant's, or one tenant's), the last ``SNAPSHOTS_KEPT`` of them, so a console
polling every second costs one small write per five seconds, however many consoles are open.

Delivery latency is over the last few minutes (``LATENCY_WINDOW_S``), from the histogram's change since the oldest
snapshot kept within them, each quantile interpolated within its bucket as Prometheus's ``histogram_quantile`` does:
what the histogram held since the store began (a replay of a day-old event counts a day) would say nothing of now.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

import msgspec
from dramatiq.brokers.redis import RedisBroker
from litestar import get
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import Parameter

from delivery import figures, keys, metrics
from schemas.dead_letters import DeadLetterReason
from schemas.deliveries import Channel, DeliveryOutcome
from schemas.stats import DeadLetters, Latency, Rates, Stats, TaskCounts, Webhooks
from service.api.auth import NO_TENANT, Principal, tenant_scope
from service.api.openapi import errors
from service.api.state import ApiState
from service.broker import QUEUE

_COUNTED = ("submitted", "retried", "succeeded", "failed", "cancelled")
_ENDED = ("succeeded", "failed", "cancelled")
# A snapshot of the counters is kept at most this often per scope, this many of them (320 s), for the rates and the
# latency.
SNAPSHOT_EVERY_S = 5.0
SNAPSHOTS_KEPT = 64
RATE_WINDOW_S = 60.0
# Delivery latency covers about the last five minutes: long enough to hold a few deliveries on a quiet day.
LATENCY_WINDOW_S = 300.0
# Rates over less than this would say little: none are given until a snapshot is at least this old.
MIN_WINDOW_S = 4.0
# An API process answers from its last figures for a scope for this long (consoles poll every second).
FRESH_FOR_S = 1.0
_LATENCY_BOUNDS = [repr(b) for b in metrics.LATENCY_BUCKETS_S] + ["+Inf"]


class _Snapshot(msgspec.Struct):
    t: float
    c: dict[str, int]


_encode = msgspec.json.Encoder().encode
_decode_snapshot = msgspec.json.Decoder(_Snapshot).decode


@get(
    "/v1/stats",
    operation_id="stats_get",
    response_description="The figures",
    tags=["stats"],
    summary="Figures for dashboards: tasks, deliveries, webhooks owed and held, dead letters, destinations, "
    "queue depth, delivery latency, and their rates over the last minute",
    description="The admin token sees every tenant's figures (or one tenant's with `tenant=`); a tenant's API key "
    "its own. Counts are since the store began; `rates` are per second over about the last minute (null until the "
    "figures of a few seconds ago are kept: the first call starts keeping them); `latency` is of the deliveries in "
    "about the last five minutes (`window_s`), each quantile interpolated within its histogram bucket.",
    responses=errors(404),
)
async def stats(
    principal: NamedDependency[Principal],
    state_: NamedDependency[ApiState],
    tenant: str | None = Parameter(default=None, max_length=200),
) -> Stats:
    tenant = tenant or None  # `tenant=` alone: no filter
    if tenant is not None and tenant not in state_.settings.api_keys.values():
        raise NotFoundException(f"no tenant {tenant[:100]!r} (tenants are the names in RELAY_API_KEYS)")
    scope = tenant_scope(principal, tenant)
    if scope == NO_TENANT:
        raise NotFoundException(f"no tenant {tenant!r} for this API key: a key sees its own tenant's figures only")
    cached = state_.stats_cache.get(scope)
    if cached is not None and time.monotonic() - cached[0] < FRESH_FOR_S:
        return cached[1]
    answer = await _compute(state_, scope)
    state_.stats_cache[scope] = (time.monotonic(), answer)
    return answer


async def _compute(state_: ApiState, scope: str | None) -> Stats:
    redis = state_.redis
    history = keys.stats_history(scope)
    ahead = f"({time.time()!r}"
    reads: list[Callable[[keys.Partition], tuple[str, ...]]] = [
        # Scheduled tasks waiting now: those whose run_at is still ahead (the others are being promoted).
        lambda p: ("ZCOUNT", p.scheduled_tasks if scope is None else p.scheduled_of(scope), ahead, "+inf"),
        lambda p: ("HGETALL", p.stats if scope is None else p.stats_of(scope)),
    ]
    if scope is None:
        reads.append(lambda p: ("HGETALL", p.latency))
    reads += [
        lambda p: ("ZCARD", p.owed_tasks if scope is None else p.open_tasks_of(scope)),
        lambda p: ("ZCARD", p.dead_letters if scope is None else p.dead_letters_of(scope)),
    ]
    replies = [*await figures.gather(redis, reads), await redis.lrange(history, 0, -1)]
    scheduled, raw, *rest = replies
    counts = _counters(raw)
    if scope is None:
        latency_raw, open_tasks, stored_dead, snapshots = rest
        counts |= {metrics.tenant_latency_field(k): v for k, v in _counters(latency_raw).items() if k != "sum"}
    else:
        open_tasks, stored_dead, snapshots = rest
    now = time.time()
    destinations = await state_.destinations.counts(scope)
    queue_depth = None
    if scope is None and isinstance(state_.broker, RedisBroker):
        queue_depth = int(await redis.llen(f"{state_.broker.namespace}:{QUEUE}"))
    kept = [s for s in (_read_snapshot(r) for r in snapshots) if s is not None]
    if not kept or now - kept[0].t >= SNAPSHOT_EVERY_S:
        await _keep_snapshot(state_, scope, _Snapshot(t=now, c=counts))
    return Stats(
        tenant=scope,
        at=datetime.fromtimestamp(now, UTC),
        tasks=TaskCounts(
            **{name: counts.get(metrics.task_counter(name), 0) for name in _COUNTED},
            scheduled=int(scheduled),
            open=open_tasks,
        ),
        deliveries={
            channel.value: {o.value: counts.get(metrics.delivery_counter(channel, o), 0) for o in DeliveryOutcome}
            for channel in Channel
        },
        webhooks=Webhooks(owed=destinations.owed, held=destinations.held),
        dead_letters=DeadLetters(
            stored=int(stored_dead),
            by_reason={r.value: counts.get(metrics.dead_letter_counter(r.value), 0) for r in DeadLetterReason},
        ),
        destinations={state.value: n for state, n in destinations.by_state.items()},
        queue_depth=queue_depth,
        latency=_recent_latency(counts, kept, now),
        rates=_rates(counts, kept, now),
    )


def _counters(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(float(v)) for k, v in raw.items()}


def _read_snapshot(raw: bytes) -> _Snapshot | None:
    try:
        return _decode_snapshot(raw)
    except msgspec.DecodeError:
        return None


async def _keep_snapshot(state_: ApiState, scope: str | None, snapshot: _Snapshot) -> None:
    """Keep ``snapshot`` unless another call kept one in the last SNAPSHOT_EVERY_S (one write per scope and period,
    however many consoles poll)."""
    marker = keys.stats_history(scope) + ":kept"
    if not await state_.redis.set(marker, "1", nx=True, px=int(SNAPSHOT_EVERY_S * 1000)):
        return
    async with state_.redis.pipeline(transaction=False) as pipe:
        pipe.lpush(keys.stats_history(scope), _encode(snapshot))
        pipe.ltrim(keys.stats_history(scope), 0, SNAPSHOTS_KEPT - 1)
        pipe.expire(keys.stats_history(scope), int(SNAPSHOT_EVERY_S * SNAPSHOTS_KEPT * 2))
        await pipe.execute()


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram, as Prometheus's ``histogram_quantile`` computes it.

    Args:
        q: the quantile, 0 to 1.
        buckets: ``(upper bound, cumulative count)`` pairs in rising order, the last one's bound ``inf``.

    Returns:
        The value at rank ``q * total``, interpolated linearly within the bucket that holds it (the first bucket
        starting at 0); the highest finite bound when that rank falls in the ``+Inf`` bucket; None with no
        observations.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    below_bound, below_count = 0.0, 0.0
    for index, (bound, cumulative) in enumerate(buckets):
        if cumulative >= rank and cumulative > below_count:
            if bound == float("inf"):
                return buckets[index - 1][0] if index > 0 else None
            if index == 0 and bound <= 0:
                return bound
            return below_bound + (bound - below_bound) * (rank - below_count) / (cumulative - below_count)
        below_bound, below_count = bound, cumulative
    return buckets[-2][0] if len(buckets) > 1 else None


def _latency(counts: Mapping[str, int], baseline: Mapping[str, int] | None = None) -> Latency:
    """The median and 99th percentile of the deliveries the histogram gained since ``baseline``, in ms."""
    cumulative = 0
    buckets: list[tuple[float, float]] = []
    for bound, name in zip([*metrics.LATENCY_BUCKETS_S, float("inf")], _LATENCY_BOUNDS, strict=True):
        field = metrics.tenant_latency_field(name)
        cumulative += max(0, counts.get(field, 0) - (baseline or {}).get(field, 0))
        buckets.append((bound, cumulative))

    def ms(q: float) -> float | None:
        value = histogram_quantile(q, buckets)
        return None if value is None else round(value * 1000, 3)

    return Latency(p50_ms=ms(0.5), p99_ms=ms(0.99), delivered=cumulative)


def _recent_latency(counts: Mapping[str, int], kept: list[_Snapshot], now: float) -> Latency:
    """Latency over the last LATENCY_WINDOW_S: since the oldest snapshot kept within it (kept is newest first)."""
    within = [s for s in kept if 0 < now - s.t <= LATENCY_WINDOW_S + SNAPSHOT_EVERY_S]
    if not within:
        return Latency(p50_ms=None, p99_ms=None, delivered=0, window_s=0.0)
    base = within[-1]
    return msgspec.structs.replace(_latency(counts, base.c), window_s=round(now - base.t, 3))


def _rates(counts: Mapping[str, int], kept: list[_Snapshot], now: float) -> Rates | None:
    """Rates against the kept snapshot closest to RATE_WINDOW_S ago (kept is newest first)."""
    older = [s for s in kept if now - s.t >= MIN_WINDOW_S]
    if not older:
        return None
    base = min(older, key=lambda s: abs(now - s.t - RATE_WINDOW_S))
    window = now - base.t

    def rate(*fields: str) -> float:
        return round(max(0, sum(counts.get(f, 0) - base.c.get(f, 0) for f in fields)) / window, 3)

    return Rates(
        window_s=round(window, 3),
        tasks_submitted=rate(metrics.task_counter("submitted")),
        tasks_ended=rate(*(metrics.task_counter(s) for s in _ENDED)),
        tasks_retried=rate(metrics.task_counter("retried")),
        deliveries=rate(
            metrics.delivery_counter(Channel.WEBHOOK, DeliveryOutcome.DELIVERED),
            metrics.delivery_counter(Channel.WEBSOCKET, DeliveryOutcome.ACKED),
        ),
        webhook_failures=rate(metrics.delivery_counter(Channel.WEBHOOK, DeliveryOutcome.FAILED)),
        dead_lettered=rate(metrics.DEAD_LETTERED),
        latency=msgspec.structs.replace(_latency(counts, base.c), window_s=round(window, 3)),
    )
