"""``/v1/dead-letters``: operators see every tenant's, a tenant only its own."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT, HTTP_409_CONFLICT

from delivery.dead_letters import REPLAY_BATCH, DeadLetterFilter
from delivery.errors import InvalidCursor, UnreadableRecord
from schemas.api import DEFAULT_PAGE_SIZE, MAX_ID_CHARS, MAX_PAGE_SIZE
from schemas.dead_letters import DeadLetter, DeadLetterPage, DeadLetterReason, ReplayFilter, ReplayOne, ReplayResult
from service.api.auth import Principal, tenant_scope
from service.api.openapi import BODY_ERRORS, errors
from service.api.state import ApiState
from service.api.time_range import check_time_range


class DeadLetterController(Controller):
    path = "/v1/dead-letters"
    tags = ["dead letters"]

    @get(
        "/",
        operation_id="dead_letters_list",
        response_description="A page of dead letters, newest first",
        summary="Dead letters, newest first",
        responses=errors(),
    )
    async def list_dead_letters(
        self,
        state_: NamedDependency[ApiState],
        principal: NamedDependency[Principal],
        reason: Annotated[DeadLetterReason | None, QueryParameter(query="reason")] = None,
        tenant: Annotated[str | None, QueryParameter(query="tenant")] = None,
        task_id: Annotated[str | None, QueryParameter(query="task_id")] = None,
        since: Annotated[datetime | None, QueryParameter(query="since")] = None,
        until: Annotated[datetime | None, QueryParameter(query="until")] = None,
        limit: Annotated[int, QueryParameter(query="limit", ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        cursor: Annotated[str | None, QueryParameter(query="cursor")] = None,
    ) -> DeadLetterPage:
        check_time_range(since, until)
        where = DeadLetterFilter(
            tenant=tenant_scope(principal, tenant), reason=reason, task_id=task_id, since=since, until=until
        )
        try:
            items, next_cursor = await state_.dead_letters.page(where, limit=limit, cursor=cursor)
        except InvalidCursor as exc:
            raise ValidationException(str(exc)) from None
        return DeadLetterPage(items=items, next_cursor=next_cursor)

    @get(
        "/{dl_id:str}",
        operation_id="dead_letters_get",
        response_description="The dead letter",
        summary="One dead letter",
        responses=errors(404, 409),
    )
    async def read(
        self, state_: NamedDependency[ApiState], principal: NamedDependency[Principal], dl_id: FromPath[str]
    ) -> DeadLetter:
        return await _visible(state_, principal, dl_id)

    @post(
        "/{dl_id:str}/replay",
        operation_id="dead_letters_replay",
        response_description="Sent again",
        status_code=HTTP_202_ACCEPTED,
        summary="Send a dead letter again",
        description="The same Event (the same `webhook-id`) on a fresh retry schedule. It leaves the dead letters "
        "once delivered, and comes back with `replays` raised if it fails again.",
        responses=errors(404, 409),
    )
    async def replay_one(
        self, state_: NamedDependency[ApiState], principal: NamedDependency[Principal], dl_id: FromPath[str]
    ) -> ReplayOne:
        dead = await _visible(state_, principal, dl_id)
        return ReplayOne(replayed=int(await state_.dead_letters.replay(dead)))

    @post(
        "/replay",
        operation_id="dead_letters_replay_bulk",
        response_description="How many matched, and how many were sent again (0 for a dry run)",
        status_code=HTTP_202_ACCEPTED,
        summary="Replay every dead letter that matches",
        description="`dry_run` is required: `true` counts what matches and sends nothing (`replayed: 0`). A tenant's "
        "key replays its own dead letters only, whatever `tenant` says.",
        responses=errors(*BODY_ERRORS),
    )
    async def replay_many(
        self,
        state_: NamedDependency[ApiState],
        principal: NamedDependency[Principal],
        data: JSONBody[ReplayFilter],
    ) -> ReplayResult:
        check_time_range(data.since, data.until)
        where = DeadLetterFilter(
            tenant=tenant_scope(principal, data.tenant), reason=data.reason, since=data.since, until=data.until
        )
        matched = replayed = 0
        batch: list[DeadLetter] = []
        async for dead in state_.dead_letters.all(where):
            matched += 1
            if not data.dry_run:
                batch.append(dead)
            if len(batch) == REPLAY_BATCH:
                replayed += sum(await state_.dead_letters.replay_batch(batch))
                batch = []
        replayed += sum(await state_.dead_letters.replay_batch(batch))
        return ReplayResult(matched=matched, replayed=replayed)

    @delete(
        "/{dl_id:str}",
        operation_id="dead_letters_delete",
        response_description="Deleted",
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete a dead letter",
        responses=errors(404),
    )
    async def remove(
        self, state_: NamedDependency[ApiState], principal: NamedDependency[Principal], dl_id: FromPath[str]
    ) -> None:
        try:
            dead = await _visible(state_, principal, dl_id)
        except Unreadable:
            await state_.dead_letters.delete_unreadable(dl_id)  # what cannot be read can still be removed
            return
        await state_.dead_letters.delete(dead)


class Unreadable(HTTPException):
    status_code = HTTP_409_CONFLICT


async def _visible(state_: ApiState, principal: Principal, dl_id: str) -> DeadLetter:
    if not dl_id.startswith("dl_") or len(dl_id) > MAX_ID_CHARS:
        raise NotFoundException(f"no dead letter {dl_id[:MAX_ID_CHARS]}")
    try:
        dead = await state_.dead_letters.get(dl_id)
    except UnreadableRecord as exc:
        if exc.tenant is None or not principal.can_see(exc.tenant):
            raise NotFoundException(f"no dead letter {dl_id}") from None
        raise Unreadable(detail=f"dead letter {dl_id} is stored but cannot be read; it can be deleted") from None
    if dead is None or not principal.can_see(dead.tenant):
        raise NotFoundException(f"no dead letter {dl_id}")
    return dead
