"""``GET /v1/stats``: figures for dashboards, read from counters Relay keeps as it goes (a few O(1) reads)."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import Parameter

from delivery import keys, metrics
from schemas.stats import Stats, TaskCounts
from service.api.auth import NO_TENANT, Principal, tenant_scope
from service.api.openapi import errors
from service.api.state import ApiState

_COUNTED = ("submitted", "scheduled", "retried", "succeeded", "failed", "cancelled")


@get(
    "/v1/stats",
    tags=["operations"],
    summary="Figures for dashboards: tasks by what happened to them, and how many are open",
    description="The admin token sees every tenant's figures (or one tenant's with `tenant=`); a tenant's API key "
    "its own.",
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
    async with state_.redis.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.STATS if scope is None else keys.stats_of(scope), [metrics.task_counter(c) for c in _COUNTED])
        pipe.zcard(keys.OWED_TASKS if scope is None else keys.open_tasks_of(scope))
        counts, open_tasks = await pipe.execute()
    figures = {name: int(float(raw)) if raw is not None else 0 for name, raw in zip(_COUNTED, counts, strict=True)}
    return Stats(tenant=scope, tasks=TaskCounts(**figures, open=int(open_tasks)))
