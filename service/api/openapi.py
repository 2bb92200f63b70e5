"""What the OpenAPI document says beyond what Litestar infers: the error answers, and the task kinds there are."""

from __future__ import annotations

from litestar import Litestar
from litestar.openapi import ResponseSpec

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
