"""The Litestar application: ``create_app(settings)``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from litestar import Litestar, MediaType, Request, Response
from litestar.di import Provide
from litestar.exceptions import HTTPException, NotAuthorizedException, SerializationException, ValidationException
from litestar.static_files import create_static_files_router
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, SlotNotCoveredError

from delivery.store_refusals import refusal_of
from service import __version__
from service.api.auth import Principal, Reader, bearer_token
from service.api.docs import docs_config
from service.api.json_depth import json_depth_exceeds
from service.api.methods import answer_every_method
from service.api.openapi import finish_document
from service.api.pages import console_page, demo_page
from service.api.routes.dead_letters import DeadLetterController
from service.api.routes.destinations import DestinationController, ops_signing_secret
from service.api.routes.ops import acknowledge_store_loss, cluster, health, prometheus_metrics, ready
from service.api.routes.signing_secret import SigningSecretController
from service.api.routes.stats import stats
from service.api.routes.tasks import TaskController
from service.api.state import ApiState
from service.api.store_watch import RETRY_AFTER_S
from service.api.strict import check_strictly
from service.api.ws import ws_endpoint
from service.settings import Settings

log = logging.getLogger("relay.api")

STATIC_DIR = Path(__file__).with_name("static")
STATIC_URL = "/static"
# A 422 quotes at most this much of what was wrong (a message may hold the bad value), and this many problems.
MAX_ERROR_CHARS = 2000
MAX_ERROR_PROBLEMS = 20


def create_app(settings: Settings) -> Litestar:
    holder: dict[str, ApiState] = {}

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        holder["state"] = ApiState.open(settings)
        await holder["state"].start()
        finish_document(app, kinds=holder["state"].kinds.names())
        try:
            yield
        finally:
            await holder.pop("state").close()

    def provide_state() -> ApiState:
        return holder["state"]

    # The principal and the reader take the state as a dependency, though they could read it from the holder:
    # Litestar resolves dependencies that do not depend on each other concurrently, in an anyio task group of
    # their own, and that group was a sixth of the API's CPU per submit (py-spy, scripts/bench --profile).
    def provide_principal(request: Request, state_: ApiState) -> Principal:  # type: ignore[type-arg]
        return state_.auth.identify(request)

    def provide_reader(request: Request, state_: ApiState) -> Reader:  # type: ignore[type-arg]
        token = bearer_token(request)
        if token is None:
            raise NotAuthorizedException("send Authorization: Bearer <api key or the task's ws_token>")
        return Reader(principal=state_.auth.lookup(token), token=token)

    async def check_body(request: Request) -> None:  # type: ignore[type-arg]
        # Before anything decodes the body: a deep one would fail deep inside a later reader (see json_depth).
        if request.method in ("POST", "PUT", "PATCH"):
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > settings.max_body_bytes:
                # Said up front: answer before a byte of it is read.
                raise HTTPException(status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE)
            body = await request.body()
            if not body.strip():
                if "data" in request.route_handler.parsed_fn_signature.parameters:
                    raise ValidationException("the body is empty: send a JSON object")
                return
            content_type = request.headers.get("content-type")
            if not _is_json(content_type):
                raise HTTPException(
                    status_code=HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                    detail=f"send the body as JSON with content-type: application/json (not {content_type or 'none'})",
                )
            # A submission's input sits one level inside the body.
            if json_depth_exceeds(body, settings.max_input_depth + 1):
                raise ValidationException(
                    f"the body nests deeper than RELAY_MAX_INPUT_DEPTH ({settings.max_input_depth}) levels"
                )
            data = request.route_handler.parsed_fn_signature.parameters.get("data")
            if data is not None:
                check_strictly(body, data.annotation)

    def http_error(request: Request, exc: HTTPException) -> Response[dict[str, object]]:  # type: ignore[type-arg]
        detail = exc.detail
        if exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
            detail = f"the body is larger than RELAY_MAX_BODY_BYTES ({settings.max_body_bytes} bytes)"
        elif exc.status_code == HTTP_400_BAD_REQUEST and isinstance(exc.__cause__, SerializationException):
            detail = f"the body is not valid JSON: {detail}"
        return Response(
            _body(exc.status_code, detail, exc.extra),
            status_code=exc.status_code,
            headers=exc.headers,
            media_type=MediaType.JSON,
        )

    app = Litestar(
        before_request=check_body,
        route_handlers=[
            TaskController,
            SigningSecretController,
            DeadLetterController,
            DestinationController,
            ops_signing_secret,
            health,
            ready,
            acknowledge_store_loss,
            cluster,
            prometheus_metrics,
            stats,
            ws_endpoint,
            demo_page,
            console_page,
            create_static_files_router(path=STATIC_URL, directories=[STATIC_DIR], name="static"),
        ],
        dependencies={
            "state_": Provide(provide_state, sync_to_thread=False),
            "principal": Provide(provide_principal, sync_to_thread=False),
            "reader": Provide(provide_reader, sync_to_thread=False),
        },
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        exception_handlers={
            ValidationException: _validation_error,
            HTTPException: http_error,
            RedisError: _storage_unavailable,
            RedisClusterException: _cluster_unavailable,
            Exception: _unexpected_error,
        },
        openapi_config=docs_config(title="Relay API", version=__version__, static_url=STATIC_URL),
        debug=False,
    )
    answer_every_method(app)
    return app


def _body(status_code: int, detail: str, extra: object = None) -> dict[str, object]:
    body: dict[str, object] = {"status_code": status_code, "detail": detail}
    if extra:
        body["extra"] = extra
    return body


def _validation_error(request: Request, exc: ValidationException) -> Response[dict[str, object]]:  # type: ignore[type-arg]
    # A request that parses but does not fit (unknown kind, bad input, bad URL, bad query) is a 422, whose
    # detail says which field and what is wrong with it (Litestar's own says only "Validation failed").
    return Response(
        _body(HTTP_422_UNPROCESSABLE_ENTITY, _shortened(_what_failed(exc)), _shortened_extra(exc.extra)),
        status_code=HTTP_422_UNPROCESSABLE_ENTITY,
        media_type=MediaType.JSON,
    )


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def storage_unavailable_detail(method: str) -> str:
    """What a 503 for an unavailable store says, by whether the request may have written anything."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return "storage is unavailable; nothing was changed: try again shortly"
    # A write sent before the store stopped answering may have been applied although its answer never came.
    return "storage is unavailable; what this request changes may have been stored or not: check, or try again shortly"


def _storage_unavailable(request: Request, exc: RedisError) -> Response[dict[str, object]]:  # type: ignore[type-arg]
    # Redis is down or stalled (every command of a request is bounded), or refuses writes (full, a failed save, a
    # read-only replica: a refused step writes nothing): the client may try again.
    refusal = refusal_of(exc)
    if refusal is not None:
        log.warning("%s %s: the store refuses writes (%s)", request.method, request.url.path, refusal.value)
        detail, retry_after_s = f"{refusal.cause}; nothing was changed: try again later", RETRY_AFTER_S
    else:
        log.warning("%s %s: storage unavailable (%s)", request.method, request.url.path, type(exc).__name__)
        detail, retry_after_s = storage_unavailable_detail(request.method), 1
    return Response(
        _body(HTTP_503_SERVICE_UNAVAILABLE, detail),
        status_code=HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(retry_after_s)},
        media_type=MediaType.JSON,
    )


def _cluster_unavailable(request: Request, exc: RedisClusterException) -> Response[dict[str, object]]:  # type: ignore[type-arg]
    # The cluster client's own failures: no node answers, or a slot has no master (a failover under way) are the
    # storage being away (503); anything else (keys of several slots in one command) is a bug (500).
    if isinstance(exc, SlotNotCoveredError) or "cannot be connected" in str(exc):
        return _storage_unavailable(request, RedisConnectionError(str(exc)))
    return _unexpected_error(request, exc)


def _unexpected_error(request: Request, exc: Exception) -> Response[dict[str, object]]:  # type: ignore[type-arg]
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response(
        _body(HTTP_500_INTERNAL_SERVER_ERROR, "internal error; it has been logged"),
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
        media_type=MediaType.JSON,
    )


def _shortened(text: str) -> str:
    """An error's text, cut to MAX_ERROR_CHARS: a message may quote the bad value, which can be as large as a body."""
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _shortened_extra(extra: object) -> object:
    if not isinstance(extra, list):
        return extra
    return [
        {k: _shortened(v) if isinstance(v, str) else v for k, v in problem.items()}
        if isinstance(problem, dict)
        else problem
        for problem in extra[:MAX_ERROR_PROBLEMS]
    ]


def _what_failed(exc: ValidationException) -> str:
    if not isinstance(exc.extra, list) or not exc.extra:
        return exc.detail
    parts = []
    for problem in exc.extra:
        if not isinstance(problem, dict) or "message" not in problem:
            return exc.detail
        key, source = problem.get("key"), getattr(problem.get("source"), "value", problem.get("source"))
        if source == "body":
            where = "the body" if key in (None, "data") else f"the body's {key}"
        elif source in ("query", "header", "path", "cookie"):
            where = f"{source} parameter {key}"
        else:
            where = str(key)
        parts.append(f"{where}: {problem['message']}")
    return "; ".join(parts)


def app_from_env() -> Litestar:
    """The factory uvicorn calls in each API worker process (``relay api --workers N``)."""
    return create_app(Settings.from_env())
