"""What the OpenAPI document says beyond what Litestar infers: the error answers, the task kinds there are, and who
may call each operation (its security, so that Swagger UI's "Authorize" sends a token with "Try it out")."""

from __future__ import annotations

from litestar import Litestar
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import SecurityRequirement, SecurityScheme

from schemas.api import ErrorBody

_WHY = {
    401: "No API key or admin token, or one Relay does not know",
    403: "The admin token where a tenant's API key is needed",
    404: "No such thing for this caller (another tenant's ids answer the same)",
    409: "Stored, but it cannot be read (it nests too deep); it can be deleted",
    413: "The body is larger than RELAY_MAX_BODY_BYTES",
    422: "A request that does not fit: the detail says what",
    429: "Over a rate or a cap; Retry-After says when to try again",
    503: "Redis or the broker is unavailable, or the store is full or refuses writes (the detail says which); try "
    "again after Retry-After",
}


def errors(*codes: int) -> dict[int, ResponseSpec]:
    """The error answers a route may give, for its ``responses=``; 401, 422 and 503 are possible everywhere."""
    return {
        code: ResponseSpec(data_container=ErrorBody, description=_WHY[code], generate_examples=False)
        for code in sorted({401, 422, 503, *codes})
    }


def list_task_kinds(app: Litestar, kinds: list[str]) -> None:
    """Name the registered kinds as the enum of a submission's ``kind`` (they are known only at start-up)."""
    schema = app.openapi_schema
    components = schema.components.schemas if schema.components is not None else None
    submission = (components or {}).get("TaskSubmission")
    if submission is not None and submission.properties is not None and "kind" in submission.properties:
        kind = submission.properties["kind"]
        if hasattr(kind, "enum"):
            kind.enum = list(kinds)


# The bearer tokens Relay takes, as the document's security schemes.
TENANT_KEY_SCHEME = "tenantKey"
ADMIN_TOKEN_SCHEME = "adminToken"  # noqa: S105 (a name, not a secret)
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
    TASK_TOKEN_SCHEME: SecurityScheme(
        type="apiKey",
        name="token",
        security_scheme_in="query",
        description="A task's ws_token, for its event stream (a browser's EventSource cannot send a header).",
    ),
}
_OPERATOR_PATHS = "/v1/ops/"
_STREAM_SUFFIX = "/stream"


def declare_security(app: Litestar) -> None:
    """Say which tokens each operation takes: every operation that may answer 401 takes a tenant's key or the
    admin token (a 403 then says which one it needs); those under /v1/ops/ the admin token only; a task's stream its
    ws_token too. The others (health, readiness, metrics) take none."""
    schema = app.openapi_schema
    for path, item in (schema.paths or {}).items():
        for method in ("get", "put", "post", "delete", "patch", "head"):
            operation = getattr(item, method, None)
            if operation is None:
                continue
            if "401" not in (operation.responses or {}):
                operation.security = []
                continue
            security: list[SecurityRequirement] = [{ADMIN_TOKEN_SCHEME: []}]
            if not path.startswith(_OPERATOR_PATHS):
                security.insert(0, {TENANT_KEY_SCHEME: []})
            if path.endswith(_STREAM_SUFFIX):
                security.append({TASK_TOKEN_SCHEME: []})
            operation.security = security
