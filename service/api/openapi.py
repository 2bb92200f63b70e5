"""What the OpenAPI document says beyond what Litestar infers, so that a code generator and a person can both use it.

- Each operation has a stable ``operation_id`` (``tasks_submit``, ``dead_letters_replay``, ...) given where the route
  is declared, and one tag of :data:`TAGS`, each described in the document's ``tags``.
- Who may call it: the security schemes of :data:`SECURITY_SCHEMES`. A route names its own when they differ from the
  rule of :func:`finish_document` (a tenant's key or the admin token; the admin token only under ``/v1/ops/``).
- The error answers a route gives, each an :class:`~schemas.api.ErrorBody` (:func:`errors`).
- An example of every request body and every answer (:mod:`service.api.openapi_examples`), the task kinds there are,
  and the webhooks Relay sends (:mod:`service.api.openapi_webhooks`): added once the app has started.
"""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Litestar
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    Components,
    Example,
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
    SecurityRequirement,
    SecurityScheme,
    Tag,
)

from schemas.api import ErrorBody
from service.api.openapi_examples import (
    DEFAULT_ERRORS,
    ERROR_EXAMPLES,
    OTHER_ANSWER_EXAMPLES,
    REQUEST_EXAMPLES,
    RESPONSE_EXAMPLES,
    Named,
)
from service.api.openapi_webhooks import WEBHOOKS_TAG, webhooks

_WHY = {
    400: "The body is not valid JSON",
    401: "No API key or admin token, or one Relay does not know",
    403: "The admin token where a tenant's API key is needed",
    404: "No such thing for this caller (another tenant's ids answer the same)",
    409: "Stored, but it cannot be read (it nests too deep); it can be deleted",
    413: "The body is larger than RELAY_MAX_BODY_BYTES",
    415: "A body that is not sent as JSON (content-type: application/json)",
    422: "A request that does not fit: the detail says what (and `extra` which fields, when it can)",
    429: "Over a rate or a cap; Retry-After says when to try again",
    503: "Redis or the broker is unavailable, or the store is full or refuses writes (the detail says which); try "
    "again after Retry-After",
}
# What a body adds to the answers a route may give: not JSON, too large, not sent as JSON.
BODY_ERRORS = (400, 413, 415)


def errors(*codes: int, why: dict[int, str] | None = None, anonymous: bool = False) -> dict[int, ResponseSpec]:
    """The error answers a route may give, for its ``responses=``: ``codes``, and the 401, 422 and 503 that every
    route with a token, a parameter and the store may give (an ``anonymous`` route gives ``codes`` alone). ``why``
    replaces the usual description of a status where the route gives it for a reason of its own."""
    statuses = set(codes) if anonymous else {401, 422, 503, *codes}
    described = _WHY | (why or {})
    return {
        code: ResponseSpec(data_container=ErrorBody, description=described[code], generate_examples=False)
        for code in sorted(statuses)
    }


# The bearer tokens Relay takes, as the document's security schemes.
TENANT_KEY_SCHEME = "tenantKey"
ADMIN_TOKEN_SCHEME = "adminToken"  # noqa: S105 (a name, not a secret)
TASK_BEARER_SCHEME = "taskBearer"
TASK_TOKEN_SCHEME = "taskToken"  # noqa: S105 (a name, not a secret)
SECURITY_SCHEMES: dict[str, SecurityScheme] = {
    TENANT_KEY_SCHEME: SecurityScheme(
        type="http",
        scheme="bearer",
        description="A tenant's API key (RELAY_API_KEYS): its own tasks, events, dead letters and destinations.",
    ),
    ADMIN_TOKEN_SCHEME: SecurityScheme(
        type="http",
        scheme="bearer",
        description="The operator's token (RELAY_ADMIN_TOKEN): every tenant's things, and /v1/ops/.",
    ),
    TASK_BEARER_SCHEME: SecurityScheme(
        type="http",
        scheme="bearer",
        description="A task's ws_token (in the task its owner submitted): reads that one task, its events and its "
        "stream, nothing else.",
    ),
    TASK_TOKEN_SCHEME: SecurityScheme(
        type="apiKey",
        name="token",
        security_scheme_in="query",
        description="A task's ws_token, for its event stream (a browser's EventSource cannot send a header).",
    ),
}
# Who may call an operation, for a route's ``security=``.
TENANT_ONLY: list[SecurityRequirement] = [{TENANT_KEY_SCHEME: []}]
TENANT_OR_OPERATOR: list[SecurityRequirement] = [{TENANT_KEY_SCHEME: []}, {ADMIN_TOKEN_SCHEME: []}]
OPERATOR_ONLY: list[SecurityRequirement] = [{ADMIN_TOKEN_SCHEME: []}]
TASK_READERS: list[SecurityRequirement] = [*TENANT_OR_OPERATOR, {TASK_BEARER_SCHEME: []}]
STREAM_READERS: list[SecurityRequirement] = [*TASK_READERS, {TASK_TOKEN_SCHEME: []}]
_OPERATOR_PATHS = "/v1/ops/"

# One tag per resource, in the order the document lists them.
TAGS = [
    Tag(name="tasks", description="Submit work, follow it (events, a live stream, delivery attempts) and cancel it."),
    Tag(
        name="dead letters",
        description="Events whose webhook could not be delivered: inspect them, replay them, delete them.",
    ),
    Tag(
        name="destinations",
        description="Where a tenant's webhooks go (its callback URLs' origins), with their flow control: state, caps, "
        "pause and resume.",
    ),
    Tag(name="stats", description="Figures for dashboards: counts, rates, backlog and delivery latency."),
    Tag(
        name="signing secret",
        description="The secret that signs a tenant's webhooks (Standard Webhooks), and its rotation.",
    ),
    Tag(name="operations", description="For the operator only (the admin token): the store, the cluster, secrets."),
    Tag(name="health", description="Whether the process runs and is ready, and its Prometheus metrics; no token."),
    Tag(
        name=WEBHOOKS_TAG,
        description="What Relay POSTs to receivers: a task's events to its webhook URL, and operational events.",
    ),
]

_ERROR_BODY = "#/components/schemas/ErrorBody"
_METHODS = ("get", "put", "post", "delete", "patch", "head")


def finish_document(app: Litestar, *, kinds: Sequence[str]) -> None:
    """Complete the app's document with what is known only once it has started, or is easier said of the built
    document than of each route: the task kinds, who may call each operation, its examples, and the webhooks."""
    schema = app.openapi_schema
    _list_task_kinds(schema, kinds)
    for path, item in (schema.paths or {}).items():
        for method in _METHODS:
            operation = getattr(item, method, None)
            if operation is not None:
                _declare_security(path, operation)
                _drop_generic_errors(operation)
                _text_as_string(operation)
                _add_examples(operation)
    schema.webhooks = webhooks()


def _list_task_kinds(schema: OpenAPI, kinds: Sequence[str]) -> None:
    """Name the registered kinds as the enum of a submission's ``kind`` (they are known only at start-up)."""
    components = schema.components if isinstance(schema.components, Components) else None
    submission = (components.schemas or {}).get("TaskSubmission") if components is not None else None
    if submission is not None and submission.properties is not None and "kind" in submission.properties:
        kind = submission.properties["kind"]
        if hasattr(kind, "enum"):
            kind.enum = list(kinds)


def _declare_security(path: str, operation: Operation) -> None:
    """An operation that may answer 401 and names no tokens takes a tenant's key or the admin token (the admin token
    only under /v1/ops/); one that cannot answer 401 takes none, and says so."""
    if operation.security:
        return
    if "401" not in (operation.responses or {}):
        operation.security = []
        return
    operation.security = list(OPERATOR_ONLY if path.startswith(_OPERATOR_PATHS) else TENANT_OR_OPERATOR)


def _drop_generic_errors(operation: Operation) -> None:
    """Litestar describes a 400 for every route with parameters, with a schema of its own; Relay answers a parameter
    that does not fit with 422, and 400 only for a body that is not JSON (:data:`BODY_ERRORS`, an ErrorBody). An
    operation that takes no parameter and no body cannot answer 422."""
    responses = operation.responses or {}
    generic = responses.get("400")
    if generic is not None and not _is_error_body(generic):
        del responses["400"]
    if not operation.parameters and operation.request_body is None:
        responses.pop("422", None)  # nothing sent to not fit: errors() gives it to every route with a token


def _text_as_string(operation: Operation) -> None:
    """A text answer (the event stream) is a string, not "anything": a generator then hands the text over."""
    for response in (operation.responses or {}).values():
        for media_type, media in (getattr(response, "content", None) or {}).items():
            if media_type.startswith("text/") and isinstance(media.schema, Schema) and media.schema.type is None:
                media.schema = Schema(type=OpenAPIType.STRING)


def _is_error_body(response: object) -> bool:
    content = getattr(response, "content", None) or {}
    return any(getattr(media.schema, "ref", None) == _ERROR_BODY for media in content.values())


def _examples(named: Sequence[Named]) -> dict[str, Example | Reference]:
    return {example.name: example.example() for example in named}


def _add_examples(operation: Operation) -> None:
    """The operation's examples by its id: of its request body, of its success answer, of its other answers, and of
    each error (the route's own where it has one, else the usual one of that status)."""
    op_id = operation.operation_id or ""
    body = operation.request_body
    if op_id in REQUEST_EXAMPLES and body is not None and not isinstance(body, Reference):
        for media in body.content.values():
            media.examples = _examples(REQUEST_EXAMPLES[op_id])
    for status, response in (operation.responses or {}).items():
        content: dict[str, OpenAPIMediaType] = getattr(response, "content", None) or {}
        code = int(status) if status.isdigit() else 0
        named: Sequence[Named] = ()
        if code < 300 and op_id in RESPONSE_EXAMPLES:
            named = RESPONSE_EXAMPLES[op_id]
        elif code in OTHER_ANSWER_EXAMPLES.get(op_id, {}):
            named = OTHER_ANSWER_EXAMPLES[op_id][code]
        elif _is_error_body(response) and code in DEFAULT_ERRORS:
            value = ERROR_EXAMPLES.get(op_id, {}).get(code, DEFAULT_ERRORS[code])
            named = [Named(f"error_{code}", str(value["detail"]), value)]
        for media in content.values():
            if named:
                media.examples = _examples(named)
