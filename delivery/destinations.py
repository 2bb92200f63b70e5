"""Destinations: flow control per receiver (a tenant plus a callback URL's origin).

The state lives in Redis (``delivery/destination.lua`` documents the keys), so every worker process on every
host sees one breaker and one in-flight count. Scripts that change a destination are built here from that
shared Lua and run as one step each. This module also reads destinations for the API, the CLI and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis

from delivery import keys
from delivery.address_guard import parse_callback_url
from delivery.errors import InvalidCursor
from delivery.policy import AttemptResult
from delivery.redis_client import as_text
from delivery.scripts import StepArgs, StepKeys, step, wire
from schemas.api import MAX_ID_CHARS
from schemas.destinations import Destination, DestinationState

# An idle destination (nothing owed, nothing set by hand) is forgotten after this long.
IDLE_TTL_S = 7 * 86400
# Most destinations one claim visits.
CLAIM_DESTINATIONS = 100
# Most destinations read by one listing or one /metrics scrape.
MAX_LISTED = 10_000
MAX_PROBE_S = 300
# Partitions counted at once by one reader of the destinations' figures.
COUNT_CONCURRENCY = 16
# The defaults of RELAY_DESTINATION_MAX_IN_FLIGHT, RELAY_BREAKER_THRESHOLD and RELAY_BREAKER_PROBE_S.
DEFAULT_MAX_IN_FLIGHT = 64
DEFAULT_BREAKER_THRESHOLD = 10
DEFAULT_PROBE_S = 5.0


class AdminKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of ``destination_admin.lua``: the destination's (its partition's ready set derives from them)."""

    dst_meta: str
    dst_due: str
    dst_flight: str
    dst_deadline: str


class AdminArgs(StepArgs, array_like=True, gc=False):
    flow_now: str
    flow_settings: str
    destination_id: str
    op: str
    max_in_flight: str = ""
    rate_per_s: str = ""


class IndexKeys(StepKeys, frozen=True, array_like=True, gc=False):
    """The keys of a step over one index of destinations (every destination of a partition, or a tenant's)."""

    index: str


class PruneArgs(StepArgs, array_like=True, gc=False):
    repeated = True
    key_head: str
    key_tail: str
    ids: list[str]


class CountArgs(StepArgs, array_like=True, gc=False):
    key_head: str
    key_tail: str


_ADMIN = step(__file__, "destination_admin.lua", flow=True, keys=AdminKeys, args=AdminArgs)
_PRUNE = step(__file__, "prune_destinations.lua", keys=IndexKeys, args=PruneArgs)
_COUNT = step(__file__, "count_destinations.lua", keys=IndexKeys, args=CountArgs)
_ORDER = {
    DestinationState.OPEN: 0,
    DestinationState.PAUSED: 1,
    DestinationState.DEGRADED: 2,
    DestinationState.HEALTHY: 3,
}


def destination_key_base(partition: keys.Partition) -> tuple[str, str]:
    """What a script puts before and after a destination id to name its keys (``<before><id><after>meta``)."""
    if partition.tag is None:
        return (keys.PREFIX + "{", "}:")
    return (partition.prefix + "dst:", ":")


@functools.lru_cache(maxsize=4096)
def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a callback URL (the port only when it is not the scheme's default)."""
    target = parse_callback_url(url)
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = {"http": 80, "https": 443}[target.scheme]
    return f"{target.scheme}://{host}" if target.port == default else f"{target.scheme}://{host}:{target.port}"


def destination_id(tenant: str, origin: str) -> str:
    digest = hashlib.sha256(f"{tenant}\n{origin}".encode()).digest()[:15]
    return "dst_" + base64.b32encode(digest).decode().lower()


@dataclass(frozen=True, slots=True)
class DestinationRef:
    id: str
    tenant: str
    origin: str

    @property
    def keys(self) -> list[str]:
        return keys.destination_keys(self.id)


# The destination named in a script's keys for a delivery that has none (WebSocket only): nothing is written there.
NO_DESTINATION = "dst_none"


@functools.lru_cache(maxsize=4096)
def destination_for(tenant: str, url: str) -> DestinationRef:
    origin = origin_of(url)
    return DestinationRef(id=destination_id(tenant, origin), tenant=tenant, origin=origin)


@dataclass(frozen=True, kw_only=True)
class FlowSettings:
    """The cluster-wide defaults every destination script runs with (built from the settings)."""

    lease_s: float  # how long an attempt holds its slot unless its outcome is written first
    retry_span_s: float  # the whole retry schedule: an open destination holds a webhook this long at most
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD
    probe_s: float = DEFAULT_PROBE_S
    idle_ttl_s: int = IDLE_TTL_S

    def header(self, now: float | None = None) -> tuple[str, str]:
        """The first two arguments of every destination script (see ``dst_init``): the time ('' for Redis's own
        clock, which every step reads unless a caller stands in for it) and the settings."""
        return ("" if now is None else repr(now), self._packed)

    @functools.cached_property
    def _packed(self) -> str:
        values = (self.max_in_flight, self.breaker_threshold, self.probe_s, self.idle_ttl_s, self.lease_s)
        return " ".join(repr(v) for v in (*values, self.retry_span_s))


def breaker_outcome(result: AttemptResult) -> str:
    """What an attempt means to its destination's breaker: 'ok', 'fail' (counted) or 'other'."""
    if result.ok:
        return "ok"
    if result.forbidden:
        return "other"
    code = result.status_code
    if code is None or code >= 500 or code == 429:
        return "fail"
    return "other"


def _time(value: bytes | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


def state_of(meta: dict[str, bytes]) -> DestinationState:
    if meta.get("paused") == b"1":
        return DestinationState.PAUSED
    if meta.get("opened_at"):
        return DestinationState.OPEN
    failed_at, succeeded_at = meta.get("last_failure_at"), meta.get("last_success_at")
    if int(meta.get("failures") or 0) > 0 or (
        failed_at and (not succeeded_at or float(failed_at) > float(succeeded_at))
    ):
        return DestinationState.DEGRADED  # its last attempt failed
    return DestinationState.HEALTHY


def view(dst_id: str, meta: dict[str, bytes], *, owed: int, in_flight: int, flow: FlowSettings) -> Destination:
    """The API's view of a destination: its meta hash and counts."""
    rate = meta.get("rate_per_s")
    state = state_of(meta)
    return Destination(
        id=dst_id,
        tenant=as_text(meta["tenant"]),
        origin=as_text(meta.get("origin") or b""),
        state=state,
        max_in_flight=int(meta.get("max_in_flight") or flow.max_in_flight),
        rate_per_s=float(rate) if rate else None,
        in_flight=in_flight,
        owed=owed,
        consecutive_failures=int(meta.get("failures") or 0),
        last_success_at=_time(meta.get("last_success_at")),
        last_failure_at=_time(meta.get("last_failure_at")),
        last_error=as_text(meta["last_error"]) if meta.get("last_error") else None,
        opened_at=_time(meta.get("opened_at")),
        next_probe_at=_time(meta.get("next_probe_at")) if meta.get("opened_at") else None,
    )


def sort_key(d: Destination) -> tuple[int, int, str]:
    """Worst first: open, paused, degraded, healthy; then the most owed."""
    return (_ORDER[d.state], -d.owed, d.id)


class DestinationStore:
    """Reads destinations and applies an operator's or owner's changes to them."""

    def __init__(self, *, redis: aioredis.Redis, flow: FlowSettings) -> None:
        self._redis = redis
        self._flow = flow
        self._admin = _ADMIN.bind(redis)
        self._prune = _PRUNE.bind(redis)
        self._count = _COUNT.bind(redis)

    async def get(self, dst_id: str) -> Destination | None:
        found = await self._read([dst_id])
        return found[0] if found else None

    async def _read(self, ids: Sequence[str]) -> list[Destination]:
        now = time.time()  # leases end by Redis's clock: with this host's off, a shown count is off for that long
        async with self._redis.pipeline(transaction=False) as pipe:
            for dst in ids:
                meta, due, flight, _ = keys.destination_keys(dst)
                pipe.hgetall(meta)
                pipe.zcard(due)
                pipe.zcard(flight)
                pipe.zcount(flight, int(now * 1000) + 1, "+inf")
            raw = await pipe.execute()
        out: list[Destination] = []
        for i, dst in enumerate(ids):
            meta, due, flight, live = raw[4 * i : 4 * i + 4]
            if not meta or b"tenant" not in meta:
                continue
            fields = {as_text(k): v for k, v in meta.items()}
            out.append(view(dst, fields, owed=int(due) + int(flight), in_flight=int(live), flow=self._flow))
        return out

    async def all(self, tenant: str | None = None) -> list[Destination]:
        """Every destination (of ``tenant``), worst first; index entries of forgotten ones are dropped."""
        found: list[Destination] = []
        for partition in keys.partitions():
            index = partition.destinations if tenant is None else partition.destinations_of(tenant)
            ids: list[str] = []
            async for member in self._redis.sscan_iter(index, count=1000):
                ids.append(as_text(member))
                if len(ids) + len(found) >= MAX_LISTED:
                    break
            here: list[Destination] = []
            for start in range(0, len(ids), 500):
                here += await self._read(ids[start : start + 500])
            gone = set(ids) - {d.id for d in here}
            if gone:  # forgotten while idle; checked again in one step, in case one was made again meanwhile
                head, tail = destination_key_base(partition)
                await self._prune(keys=wire(IndexKeys(index)), args=wire(PruneArgs(head, tail, sorted(gone))))
            found += here
            if len(found) >= MAX_LISTED:
                break
        found.sort(key=sort_key)
        return found

    async def page(
        self, *, tenant: str | None, state: DestinationState | None, limit: int, cursor: str | None
    ) -> tuple[list[Destination], str | None]:
        after = _decode_cursor(cursor) if cursor else None
        items = [d for d in await self.all(tenant) if state is None or d.state is state]
        if after is not None:
            items = [d for d in items if sort_key(d) > after]
        page = items[:limit]
        more = len(items) > limit
        return page, (_encode_cursor(sort_key(page[-1])) if more and page else None)

    async def change(self, dst_id: str, op: str, *args: str) -> Destination | None:
        """Apply ``op`` ('pause', 'resume' or 'set' with max_in_flight and rate ('' keeps, 'none' clears))."""
        flow_now, flow_settings = self._flow.header()
        done = await self._admin(
            keys=wire(AdminKeys(*keys.destination_keys(dst_id))),
            args=wire(AdminArgs(flow_now, flow_settings, dst_id, op, *args)),
        )
        if not done:
            return None
        return await self.get(dst_id)

    async def counts(self, tenant: str | None = None) -> DestinationCounts:
        """Destinations (every tenant's, or one's) by state, and the webhooks they owe and hold, counted in Redis
        in one step (no record is read out: a thousand destinations cost about a millisecond of Redis)."""
        parts = keys.partitions()
        counted = await asyncio.gather(*(self._count_raw(p, tenant) for p in parts[:1]))
        if len(parts) > 1:  # a few at once: each is a step on its own partition's node
            for start in range(1, len(parts), COUNT_CONCURRENCY):
                batch = parts[start : start + COUNT_CONCURRENCY]
                counted += await asyncio.gather(*(self._count_raw(p, tenant) for p in batch))
        return _counts([sum(column) for column in zip(*counted, strict=True)])

    async def counts_in(self, partition: keys.Partition, tenant: str | None = None) -> DestinationCounts:
        """As :meth:`counts`, for the destinations of one partition."""
        return _counts(await self._count_raw(partition, tenant))

    async def _count_raw(self, partition: keys.Partition, tenant: str | None) -> list[int]:
        index = partition.destinations if tenant is None else partition.destinations_of(tenant)
        head, tail = destination_key_base(partition)
        counted = await self._count(keys=wire(IndexKeys(index)), args=wire(CountArgs(head, tail)))
        return [int(n) for n in counted]


def _counts(totals: Sequence[int]) -> DestinationCounts:
    healthy, degraded, opened, paused, owed, held = totals
    by_state = {
        DestinationState.HEALTHY: int(healthy),
        DestinationState.DEGRADED: int(degraded),
        DestinationState.OPEN: int(opened),
        DestinationState.PAUSED: int(paused),
    }
    return DestinationCounts(by_state=by_state, owed=int(owed), held=int(held))


@dataclass(slots=True)
class DestinationCounts:
    by_state: dict[DestinationState, int]
    owed: int = 0  # webhooks owed to any destination, in flight included
    held: int = 0  # of those, the ones an open or paused destination holds


def _encode_cursor(key: tuple[int, int, str]) -> str:
    return f"{key[0]}:{key[1]}:{key[2]}"


def _decode_cursor(cursor: str) -> tuple[int, int, str]:
    rank, _, rest = cursor.partition(":")
    owed, _, dst = rest.partition(":")
    try:
        if dst.startswith("dst_") and len(dst) <= MAX_ID_CHARS:
            return int(rank), int(owed), dst
    except ValueError:
        pass
    raise InvalidCursor(f"{cursor[:100]!r} is not a cursor from this list") from None
