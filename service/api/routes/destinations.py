"""``/v1/destinations``: flow control per receiver, seen and steered; operators see all, a tenant its own."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Response, get, patch, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath, JSONBody, QueryParameter

from delivery.errors import InvalidCursor
from schemas.api import DEFAULT_PAGE_SIZE, MAX_ID_CHARS, MAX_PAGE_SIZE, SigningSecret
from schemas.destinations import Destination, DestinationCaps, DestinationPage, DestinationState
from service.api.auth import NO_TENANT, Principal, require_operator, tenant_scope
from service.api.openapi import BODY_ERRORS, OPERATOR_ONLY, errors
from service.api.state import ApiState


class DestinationController(Controller):
    path = "/v1/destinations"
    tags = ["destinations"]

    @get(
        "/",
        operation_id="destinations_list",
        response_description="A page of destinations, worst first",
        summary="Destinations, worst first",
        description="`open`, `paused`, `degraded`, `healthy`, then most owed first.",
        responses=errors(),
    )
    async def list_destinations(
        self,
        state_: NamedDependency[ApiState],
        principal: NamedDependency[Principal],
        state_filter: Annotated[DestinationState | None, QueryParameter(query="state")] = None,
        tenant: Annotated[str | None, QueryParameter(query="tenant")] = None,
        limit: Annotated[int, QueryParameter(query="limit", ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        cursor: Annotated[str | None, QueryParameter(query="cursor")] = None,
    ) -> DestinationPage:
        scope = tenant_scope(principal, tenant)
        if scope == NO_TENANT:
            return DestinationPage(items=[], next_cursor=None)
        try:
            items, next_cursor = await state_.destinations.page(
                tenant=scope, state=state_filter, limit=limit, cursor=cursor
            )
        except InvalidCursor as exc:
            raise ValidationException(str(exc)) from None
        return DestinationPage(items=items, next_cursor=next_cursor)

    @get(
        "/{destination_id:str}",
        operation_id="destinations_get",
        response_description="The destination",
        summary="One destination",
        responses=errors(404),
    )
    async def read(
        self, state_: NamedDependency[ApiState], principal: NamedDependency[Principal], destination_id: FromPath[str]
    ) -> Destination:
        return await _visible(state_, principal, destination_id)

    @patch(
        "/{destination_id:str}",
        operation_id="destinations_update",
        response_description="The destination with its new caps",
        summary="Change a destination's caps",
        description="A field left out is left as it is; `rate_per_s: null` removes the rate.",
        responses=errors(*BODY_ERRORS, 404),
    )
    async def set_caps(
        self,
        state_: NamedDependency[ApiState],
        principal: NamedDependency[Principal],
        destination_id: FromPath[str],
        data: JSONBody[DestinationCaps],
    ) -> Destination:
        await _visible(state_, principal, destination_id)
        if data.rate_per_s is msgspec.UNSET:
            rate = ""
        elif data.rate_per_s is None:
            rate = "none"
        else:
            rate = repr(data.rate_per_s)
        max_in_flight = "" if data.max_in_flight is msgspec.UNSET else str(data.max_in_flight)
        return await _changed(state_, destination_id, "set", max_in_flight, rate)

    @post(
        "/{destination_id:str}/pause",
        operation_id="destinations_pause",
        response_description="The destination, now paused",
        status_code=200,
        summary="Hold every webhook of a destination",
        responses=errors(404),
    )
    async def pause(
        self, state_: NamedDependency[ApiState], principal: NamedDependency[Principal], destination_id: FromPath[str]
    ) -> Destination:
        await _visible(state_, principal, destination_id)
        return await _changed(state_, destination_id, "pause")

    @post(
        "/{destination_id:str}/resume",
        operation_id="destinations_resume",
        response_description="The destination, released",
        status_code=200,
        summary="Release a paused destination",
        responses=errors(404),
    )
    async def resume(
        self, state_: NamedDependency[ApiState], principal: NamedDependency[Principal], destination_id: FromPath[str]
    ) -> Destination:
        await _visible(state_, principal, destination_id)
        return await _changed(state_, destination_id, "resume")


@get(
    "/v1/ops/signing-secret",
    operation_id="ops_signing_secret_get",
    response_description="The operator secret",
    tags=["operations"],
    security=OPERATOR_ONLY,
    summary="The secret that signs operational events",
    responses=errors(403, why={403: "A tenant's API key where the admin token is needed"}),
)
async def ops_signing_secret(
    state_: NamedDependency[ApiState], principal: NamedDependency[Principal]
) -> Response[SigningSecret]:
    require_operator(principal)
    secrets = await state_.secrets.live_ops()
    return Response(SigningSecret(secret=secrets[0]), headers={"Cache-Control": "no-store"})


async def _visible(state_: ApiState, principal: Principal, destination_id: str) -> Destination:
    if not destination_id.startswith("dst_") or len(destination_id) > MAX_ID_CHARS:
        raise NotFoundException(f"no destination {destination_id[:MAX_ID_CHARS]}")
    found = await state_.destinations.get(destination_id)
    if found is None or not principal.can_see(found.tenant):
        raise NotFoundException(f"no destination {destination_id}")
    return found


async def _changed(state_: ApiState, destination_id: str, op: str, *args: str) -> Destination:
    changed = await state_.destinations.change(destination_id, op, *args)
    if changed is None:
        raise NotFoundException(f"no destination {destination_id}")
    return changed
