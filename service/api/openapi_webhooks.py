"""The ``webhooks`` section of the OpenAPI document: every request Relay sends, for whoever writes its receiver.

A task's events go to the URL its submission named (``webhook.url``), signed with the tenant's secret: the final
ones (``task.completed``, ``task.failed``, ``task.cancelled``) unless ``webhook.events`` lists others, and
``task.progress`` and ``task.retrying`` only when it lists them. Operational events (``destination.opened``,
``destination.recovered``) go to ``RELAY_OPS_WEBHOOK_URL``, signed with the operator secret. Each is described with its
body (the Event, with the ``data`` of its type), the Standard Webhooks headers, and what each answer of the receiver
makes Relay do (read from :func:`delivery.policy.decide` and :mod:`delivery.ops_events`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    PathItem,
    Reference,
    RequestBody,
    Schema,
)

from delivery.signing import sign
from schemas.events import EventType
from service import USER_AGENT
from service.api.openapi_examples import OPS_EVENT_EXAMPLES, SECRET, WEBHOOK_EXAMPLES, ExactExample

__all__ = ["WEBHOOKS_TAG", "webhooks"]

WEBHOOKS_TAG = "webhooks"
_EVENT = Reference(ref="#/components/schemas/Event")
_TASK_ERROR = Reference(ref="#/components/schemas/TaskError")
_DESTINATION = Reference(ref="#/components/schemas/Destination")


def _string(description: str, **more: object) -> Schema:
    return Schema(type=OpenAPIType.STRING, description=description, **more)  # type: ignore[arg-type]


# The data of each type of task event.
_DATA: dict[EventType, Schema | Reference] = {
    EventType.COMPLETED: Schema(
        type=OpenAPIType.OBJECT,
        required=["status", "result"],
        properties={
            "status": Schema(const="succeeded"),
            "result": Schema(description="What the task's kind returned: any JSON value"),
        },
    ),
    EventType.FAILED: Schema(
        type=OpenAPIType.OBJECT,
        required=["status", "error"],
        properties={"status": Schema(const="failed"), "error": _TASK_ERROR},
    ),
    EventType.CANCELLED: Schema(
        type=OpenAPIType.OBJECT, required=["status"], properties={"status": Schema(const="cancelled")}
    ),
    EventType.PROGRESS: Reference(ref="#/components/schemas/Progress"),
    EventType.RETRYING: Schema(
        type=OpenAPIType.OBJECT,
        required=["attempt", "error", "run_at"],
        properties={
            "attempt": Schema(
                type=OpenAPIType.INTEGER, description="The attempt that will run next (2 for the first retry)"
            ),
            "error": _TASK_ERROR,
            "run_at": _string("When that attempt starts (RFC 3339, UTC)", format="date-time"),
        },
    ),
}
_WHEN: dict[EventType, str] = {
    EventType.COMPLETED: "The task ended `succeeded`; `data.result` is what its kind returned.",
    EventType.FAILED: "The task ended `failed`; `data.error` says why.",
    EventType.CANCELLED: "The task was cancelled (`POST /v1/tasks/{task_id}/cancel`) before it ended.",
    EventType.PROGRESS: "The task reported progress. Sent only when the submission's `webhook.events` lists "
    "`task.progress`; a progress webhook still owed when a newer event of its task is owed is not sent (its attempt "
    "is `skipped`).",
    EventType.RETRYING: "An attempt of the task's work failed in a way its kind retries: the task waits, `scheduled`, "
    "until `data.run_at`. Sent only when the submission's `webhook.events` lists `task.retrying`.",
}


def _headers(example: dict[str, Any]) -> list[Parameter | Reference]:
    """The headers of a webhook, their examples those of ``example`` sent at its ``created_at``, signed with the
    example secret (the one ``GET /v1/signing-secret`` shows): a receiver's verification can be checked against them."""
    body = msgspec.json.encode(example)  # the bytes Relay sends: compact, in the Event's field order
    timestamp = int(datetime.fromisoformat(example["created_at"]).timestamp())
    return [
        Parameter(
            name="webhook-id",
            param_in="header",
            required=True,
            description="The event's id: the same on every attempt and every replay of this event. Dedupe on it "
            "(delivery is at least once).",
            schema=_string("An event id", pattern="^evt_"),
            example=example["id"],
        ),
        Parameter(
            name="webhook-timestamp",
            param_in="header",
            required=True,
            description="When this attempt was sent, in Unix seconds. Refuse one far from your clock (Standard "
            "Webhooks suggests 5 minutes either way): it is part of what is signed, so an old request replayed fails.",
            schema=_string("Unix seconds", pattern="^[0-9]+$"),
            example=str(timestamp),
        ),
        Parameter(
            name="webhook-signature",
            param_in="header",
            required=True,
            description="`v1,` and the base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` (the body's "
            "exact bytes) under the secret's key (the base64 after `whsec_`). While a rotation's old secret still "
            "signs (24 h), two signatures, space-separated: accept the request when any one matches a secret you "
            "hold. The example is the example body's, sent compact as Relay sends it, under the example secret.",
            schema=_string("Space-separated signatures", pattern="^v1,[A-Za-z0-9+/=]+( v1,[A-Za-z0-9+/=]+)*$"),
            example=sign(SECRET, example["id"], timestamp, body),
        ),
        Parameter(
            name="user-agent",
            param_in="header",
            required=True,
            description="`relay/` and Relay's version.",
            schema=_string("relay/<version>", pattern="^relay/"),
            example=USER_AGENT,
        ),
    ]


_TASK_ANSWERS = {
    "2XX": OpenAPIResponse(
        description="Delivered: any 2xx settles the event; nothing more is sent for it. The body is not read."
    ),
    "410": OpenAPIResponse(
        description="Gone: the event becomes a dead letter at once (`endpoint_gone`), without retries; an operator "
        "or the tenant may replay it later (`POST /v1/dead-letters/{dl_id}/replay`)."
    ),
    "429": OpenAPIResponse(
        description="Too many requests: retried after `Retry-After` (seconds or an HTTP date; at most a day), and the "
        "whole destination (this URL's origin) is held until then. Without `Retry-After`, retried on the schedule. "
        "Counts toward the destination's circuit breaker."
    ),
    "503": OpenAPIResponse(
        description="Unavailable: as 429, `Retry-After` is honoured and holds the whole destination until then."
    ),
    "default": OpenAPIResponse(
        description="Anything else (another status, a redirect, which is not followed, a timeout after "
        "`RELAY_WEBHOOK_TIMEOUT`, no connection) is a failed attempt: retried on `RELAY_RETRY_SCHEDULE` with ±10 % "
        "jitter; after the last retry the event becomes a dead letter (`retries_exhausted`). Consecutive failures "
        "(5xx, 429, no answer) open the destination's circuit: its webhooks are then held and one probe at a time is "
        "sent until a 2xx."
    ),
}
_OPS_ANSWERS = {
    "2XX": OpenAPIResponse(description="Delivered."),
    "default": OpenAPIResponse(
        description="Anything else, a timeout or no connection: tried again after 1, 5 and 30 s, then given up (best "
        "effort: operational events are not dead-lettered)."
    ),
}


def _task_webhook(event_type: EventType) -> PathItem:
    body = Schema(
        all_of=[
            _EVENT,
            Schema(
                type=OpenAPIType.OBJECT,
                properties={"type": Schema(const=event_type.value), "data": _DATA[event_type]},
            ),
        ]
    )
    return PathItem(
        post=Operation(
            operation_id="on_" + event_type.value.replace(".", "_"),
            tags=[WEBHOOKS_TAG],
            summary=f"{event_type.value}: Relay POSTs it to the task's webhook.url",
            description=_WHEN[event_type] + " Signed with the tenant's secret (`GET /v1/signing-secret`); the same "
            "Event is the WebSocket's and the stream's payload.",
            parameters=_headers(WEBHOOK_EXAMPLES[event_type]),
            request_body=RequestBody(
                required=True,
                content={
                    "application/json": OpenAPIMediaType(
                        schema=body,
                        examples={
                            event_type.value: ExactExample(summary=event_type.value, value=WEBHOOK_EXAMPLES[event_type])
                        },
                    )
                },
            ),
            responses=dict(_TASK_ANSWERS),
        )
    )


def _ops_webhook(event_type: str, when: str) -> PathItem:
    body = Schema(
        type=OpenAPIType.OBJECT,
        required=["id", "type", "created_at", "data"],
        properties={
            "id": _string("The event's id, also its webhook-id"),
            "type": Schema(const=event_type),
            "created_at": _string("When it happened (RFC 3339, UTC)", format="date-time"),
            "data": _DESTINATION,
        },
    )
    return PathItem(
        post=Operation(
            operation_id="on_" + event_type.replace(".", "_"),
            tags=[WEBHOOKS_TAG],
            summary=f"{event_type}: Relay POSTs it to RELAY_OPS_WEBHOOK_URL",
            description=when + " Signed with the operator secret (`GET /v1/ops/signing-secret`); `data` is the "
            "destination as it is now.",
            parameters=_headers(OPS_EVENT_EXAMPLES[event_type]),
            request_body=RequestBody(
                required=True,
                content={
                    "application/json": OpenAPIMediaType(
                        schema=body,
                        examples={event_type: ExactExample(summary=event_type, value=OPS_EVENT_EXAMPLES[event_type])},
                    )
                },
            ),
            responses=dict(_OPS_ANSWERS),
        )
    )


def webhooks() -> dict[str, PathItem | Reference]:
    """The document's ``webhooks``: one entry per event type Relay POSTs, named by the type."""
    described: dict[str, PathItem | Reference] = {t.value: _task_webhook(t) for t in EventType}
    described["destination.opened"] = _ops_webhook(
        "destination.opened",
        "A destination's circuit opened: its receiver failed RELAY_BREAKER_THRESHOLD attempts in a row, and its "
        "webhooks are held.",
    )
    described["destination.recovered"] = _ops_webhook(
        "destination.recovered", "An open destination's probe was answered 2xx: its backlog drains again."
    )
    return described
