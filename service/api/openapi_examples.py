"""The examples of the OpenAPI document: a body for every request and every answer, with realistic values.

Each answer's example is built from the wire type the route returns (a :class:`~schemas.tasks.Task`, a
:class:`~schemas.dead_letters.DeadLetter`, ...), so mypy holds it to that type's fields, and a test validates every
example in the served document against its own schema. Ids have Relay's shapes (``task_`` and 24 base32
characters), times are RFC 3339 in UTC, secrets look like secrets and are none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from litestar.openapi.spec import Example

from schemas.api import ErrorBody, SigningSecret
from schemas.cluster import ClusterView, StorageNode
from schemas.dead_letters import DeadLetter, DeadLetterPage, DeadLetterReason, ReplayOne, ReplayResult
from schemas.deliveries import Attempt, AttemptList, Channel, DeliveryOutcome, DeliveryStep, StepKind
from schemas.destinations import Destination, DestinationPage, DestinationState, OpsEvent
from schemas.events import Event, EventList, EventType
from schemas.stats import DeadLetters, Latency, Rates, Stats, TaskCounts, Webhooks
from schemas.tasks import Progress, Task, TaskError, TaskPage, TaskStatus, Webhook

__all__ = [
    "DEFAULT_ERRORS",
    "ERROR_EXAMPLES",
    "OPS_EVENT_EXAMPLES",
    "OTHER_ANSWER_EXAMPLES",
    "REQUEST_EXAMPLES",
    "RESPONSE_EXAMPLES",
    "SECRET",
    "WEBHOOK_EXAMPLES",
    "ExactExample",
    "Named",
]

TASK_ID = "task_tx6ommfmrh3yj6ldwafcuuml"
OTHER_TASK_ID = "task_smyi7s426nxjt4vwvtvoraz4"
DEAD_LETTER_ID = "dl_ycbgii7ehcf7xmsyckp3iiaw"
DESTINATION_ID = "dst_wtagnpwaxq45c3ryh6c4mfuo"
EVENT_IDS = ["evt_k6opaypkzuriitownmyd42ls", "evt_3b3p4x5tsshdci7uluxwfsgd", "evt_glx4ajrxc3dwkddaoctm74vr"]
OPS_EVENT_ID = "evt_hxsatrzri56ozqvrzdkay2wy"
WS_TOKEN = "3msVesuB8EOClKWFusPVEIqGsoq6uvxR"  # noqa: S105 (an example, not a secret)
OTHER_WS_TOKEN = "Xw2Q9kH1vE0tLr7cYp4sNa6bJm3dFg8u"  # noqa: S105 (an example, not a secret)
SECRET = "whsec_99yjwR8kNir00JA9Bn2MG/RcWbhiNrCI"  # noqa: S105 (an example, not a secret)
ROTATED_SECRET = "whsec_HAnmkZo7c6ZWzreDaCf56NUu0fR2cXes"  # noqa: S105 (an example, not a secret)
CURSOR = "eyJ0IjoxNzY1MTM2NjAwMDAwLCJpZCI6InRhc2tfc215aTdzNDI2bnhqdDR2d3R2b3JhejQifQ"
WEBHOOK_URL = "https://hooks.example.com/relay"
ORIGIN = "https://hooks.example.com"


def _at(seconds: float) -> datetime:
    """A moment of the example story: a task submitted at 09:30:00 UTC, and what followed, ``seconds`` later."""
    return datetime(2026, 12, 7, 9, 30, tzinfo=UTC) + timedelta(seconds=seconds)


def _json(value: object) -> Any:
    """A wire value as the API writes it (times as RFC 3339 strings, enums as their values)."""
    return msgspec.json.decode(msgspec.json.encode(value))


class Named(msgspec.Struct, frozen=True):
    """One example: a short name (the key in the document), what it shows, and the body."""

    name: str
    summary: str
    value: Any

    def example(self) -> Example:
        return ExactExample(summary=self.summary, value=self.value)


@dataclass
class ExactExample(Example):
    """An Example whose value the document shows as it is: Litestar leaves out every null of a spec object when it
    writes the document, values of an example included, and a null an example's schema requires is part of it."""

    def to_schema(self) -> dict[str, Any]:
        schema = super().to_schema()
        schema["value"] = self.value
        return schema


# --- Tasks -----------------------------------------------------------------------------------------------------

_WEBHOOK = Webhook(url=WEBHOOK_URL, events=[EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED])
TASK_QUEUED = Task(
    id=TASK_ID,
    kind="echo",
    status=TaskStatus.QUEUED,
    input={"order": 42},
    created_at=_at(0),
    webhook=_WEBHOOK,
    websocket=True,
    ws_token=WS_TOKEN,
)
TASK_SUCCEEDED = msgspec.structs.replace(
    TASK_QUEUED, status=TaskStatus.SUCCEEDED, result={"order": 42}, started_at=_at(0.012), finished_at=_at(0.015)
)
TASK_RUNNING = Task(
    id=OTHER_TASK_ID,
    kind="sleep",
    status=TaskStatus.RUNNING,
    input={"seconds": 30},
    created_at=_at(-20),
    progress=Progress(percent=40.0, message="12 of 30 s"),
    websocket=True,
    started_at=_at(-18),
    ws_token=OTHER_WS_TOKEN,
)
TASK_CANCELLED = msgspec.structs.replace(TASK_RUNNING, status=TaskStatus.CANCELLED, progress=None, finished_at=_at(-1))
TASK_SCHEDULED = Task(
    id=TASK_ID,
    kind="echo",
    status=TaskStatus.SCHEDULED,
    input={"later": True},
    created_at=_at(0),
    run_at=_at(60),
    ws_token=WS_TOKEN,
)

EVENT_PROGRESS = Event(
    id=EVENT_IDS[0],
    type=EventType.PROGRESS,
    task_id=OTHER_TASK_ID,
    seq=1,
    created_at=_at(-17),
    data=msgspec.to_builtins(Progress(percent=10.0, message="3 of 30 s")),
)
EVENT_COMPLETED = Event(
    id=EVENT_IDS[1],
    type=EventType.COMPLETED,
    task_id=TASK_ID,
    seq=1,
    created_at=_at(0.015),
    data={"status": "succeeded", "result": {"order": 42}},
)
EVENT_FAILED = Event(
    id=EVENT_IDS[2],
    type=EventType.FAILED,
    task_id=TASK_ID,
    seq=2,
    created_at=_at(1.2),
    data={"status": "failed", "error": msgspec.to_builtins(TaskError(type="ValueError", message="no such order"))},
)
EVENT_CANCELLED = Event(
    id=EVENT_IDS[2],
    type=EventType.CANCELLED,
    task_id=OTHER_TASK_ID,
    seq=4,
    created_at=_at(-1),
    data={"status": "cancelled"},
)
EVENT_RETRYING = Event(
    id=EVENT_IDS[1],
    type=EventType.RETRYING,
    task_id=TASK_ID,
    seq=1,
    created_at=_at(0.2),
    data={
        "attempt": 2,
        "error": msgspec.to_builtins(TaskError(type="Retry", message="the upstream answered 503")),
        "run_at": _json(_at(1.2)),
    },
)

# --- Deliveries, dead letters, destinations -------------------------------------------------------------------

ATTEMPTS = AttemptList(
    attempts=[
        Attempt(
            event_id=EVENT_IDS[1],
            channel=Channel.WEBSOCKET,
            attempt=1,
            at=_at(10.015),
            outcome=DeliveryOutcome.UNACKED,
            duration_ms=10000.0,
        ),
        Attempt(
            event_id=EVENT_IDS[1],
            channel=Channel.WEBHOOK,
            attempt=1,
            at=_at(10.2),
            outcome=DeliveryOutcome.FAILED,
            status_code=503,
            duration_ms=84.2,
        ),
        Attempt(
            event_id=EVENT_IDS[1],
            channel=Channel.WEBHOOK,
            attempt=2,
            at=_at(15.3),
            outcome=DeliveryOutcome.DELIVERED,
            status_code=204,
            duration_ms=41.7,
        ),
    ],
    steps=[],
)
DEAD_LETTER = DeadLetter(
    id=DEAD_LETTER_ID,
    tenant="acme",
    task_id=TASK_ID,
    event=EVENT_COMPLETED,
    url=WEBHOOK_URL,
    reason=DeadLetterReason.RETRIES_EXHAUSTED,
    attempts=10,
    last_status_code=None,
    last_error="connection refused",
    first_attempt_at=_at(0.1),
    dead_at=_at(86400 * 3 + 1800),
    replays=0,
)
DELIVERIES_WITH_STEPS = msgspec.structs.replace(
    ATTEMPTS,
    attempts=ATTEMPTS.attempts[:2],
    steps=[
        DeliveryStep(
            event_id=EVENT_IDS[1],
            step=StepKind.DEAD_LETTERED,
            at=_at(86400 * 3 + 1800),
            dead_letter_id=DEAD_LETTER_ID,
            reason=DeadLetterReason.RETRIES_EXHAUSTED,
        )
    ],
)
DESTINATION = Destination(
    id=DESTINATION_ID,
    tenant="acme",
    origin=ORIGIN,
    state=DestinationState.HEALTHY,
    max_in_flight=64,
    rate_per_s=None,
    in_flight=3,
    owed=17,
    consecutive_failures=0,
    last_success_at=_at(15.3),
    last_failure_at=_at(10.2),
    last_error="503 Service Unavailable",
    opened_at=None,
    next_probe_at=None,
)
DESTINATION_OPEN = msgspec.structs.replace(
    DESTINATION,
    id="dst_k2vq5tb7mwe3yha4nzcxrp6d",
    origin="https://erp.example.net",
    state=DestinationState.OPEN,
    in_flight=0,
    owed=212,
    consecutive_failures=10,
    last_success_at=_at(-3600),
    last_failure_at=_at(12),
    last_error="timed out after 15 s",
    opened_at=_at(12),
    next_probe_at=_at(22),
)
DESTINATION_PAUSED = msgspec.structs.replace(DESTINATION, state=DestinationState.PAUSED, in_flight=0)
DESTINATION_CAPPED = msgspec.structs.replace(DESTINATION, max_in_flight=8, rate_per_s=20.0)

# --- Figures ----------------------------------------------------------------------------------------------------

_LATENCY = Latency(p50_ms=38.5, p99_ms=412.0, delivered=5120, window_s=300.0)
STATS = Stats(
    tenant="acme",
    at=_at(30),
    tasks=TaskCounts(submitted=18240, scheduled=3, retried=41, succeeded=18011, failed=152, cancelled=7, open=70),
    deliveries={
        "websocket": {"delivered": 0, "acked": 9120, "failed": 0, "unacked": 14, "skipped": 0},
        "webhook": {"delivered": 9003, "acked": 0, "failed": 388, "unacked": 0, "skipped": 12},
    },
    webhooks=Webhooks(owed=229, held=212),
    dead_letters=DeadLetters(stored=3, by_reason={"retries_exhausted": 3, "endpoint_gone": 1, "forbidden_address": 0}),
    destinations={"healthy": 4, "degraded": 0, "open": 1, "paused": 0},
    queue_depth=12,
    latency=_LATENCY,
    rates=Rates(
        window_s=60.0,
        tasks_submitted=17.2,
        tasks_ended=16.9,
        tasks_retried=0.05,
        deliveries=16.8,
        webhook_failures=0.4,
        dead_lettered=0.0,
        latency=Latency(p50_ms=35.1, p99_ms=380.0, delivered=1008, window_s=60.0),
    ),
)
CLUSTER = ClusterView(
    mode="standalone",
    partitions=1,
    nodes=[
        StorageNode(
            address="10.0.0.5:6379",
            role="master",
            up=True,
            slots=16384,
            partitions=1,
            keys=48211,
            memory_bytes=73400320,
            commands_per_s=1850,
            owed_tasks=70,
            owed_webhooks=229,
        )
    ],
    workers=["worker-a:4187", "worker-b:4190"],
    api_nodes=["api-a:3920"],
)

# --- Errors -----------------------------------------------------------------------------------------------------


def _error(status_code: int, detail: str, extra: list[dict[str, Any]] | None = None) -> Any:
    # As the API writes it: without ``extra`` when there is none.
    body: dict[str, Any] = msgspec.to_builtins(ErrorBody(status_code=status_code, detail=detail, extra=extra))
    if extra is None:
        del body["extra"]
    return body


# Every route's error answers unless ERROR_EXAMPLES says otherwise for its operation.
DEFAULT_ERRORS: dict[int, Any] = {
    400: _error(400, "the body is not valid JSON: JSON is malformed: object keys must be strings (byte 1)"),
    401: _error(401, "unknown API key or token"),
    403: _error(403, "this endpoint takes a tenant's API key, not the admin token"),
    404: _error(404, f"no task {TASK_ID}"),
    409: _error(409, f"task {TASK_ID} is stored but cannot be read (it nests too deep)"),
    413: _error(413, "the body is larger than RELAY_MAX_BODY_BYTES (262144 bytes)"),
    415: _error(415, "send the body as JSON with content-type: application/json (not text/plain)"),
    422: _error(
        422,
        "query parameter limit: Expected `int` <= 500",
        [{"message": "Expected `int` <= 500", "key": "limit", "source": "query"}],
    ),
    429: _error(429, "more than 50 submissions a second; retry in 1 s"),
    503: _error(503, "storage is unavailable; nothing was changed: try again shortly"),
}
_NO_DEAD_LETTER = _error(404, f"no dead letter {DEAD_LETTER_ID}")
_NO_DESTINATION = _error(404, f"no destination {DESTINATION_ID}")
_BAD_BODY_FIELD = _error(422, "max_in_flight: expected `int` <= 1000")
ERROR_EXAMPLES: dict[str, dict[int, Any]] = {
    "tasks_submit": {
        409: _error(409, "a request with this Idempotency-Key and another body is in progress; retry in a moment"),
        422: _error(422, "unknown task kind 'resize'; known kinds: echo, fail, sleep"),
        503: _error(
            503,
            "the store did not answer (stalled or unreachable): the task may have been accepted. Retry with the same "
            "Idempotency-Key header, which returns that task rather than making a second one",
        ),
    },
    "tasks_cancel": {409: _error(409, f"task {TASK_ID} has already ended (succeeded)")},
    "tasks_stream": {
        422: _error(422, "header Last-Event-ID: expected the seq of an event, 0 to 9007199254740992, not 'abc'"),
        429: _error(
            429,
            "100 streams are open from this address already (RELAY_WS_MAX_PER_CLIENT); close one, or try again later",
        ),
    },
    "tasks_list": {422: _error(422, "query parameter cursor: 'abc' is not a cursor from this list")},
    "dead_letters_get": {
        404: _NO_DEAD_LETTER,
        409: _error(409, f"dead letter {DEAD_LETTER_ID} is stored but cannot be read; it can be deleted"),
    },
    "dead_letters_replay": {
        404: _NO_DEAD_LETTER,
        409: _error(409, f"dead letter {DEAD_LETTER_ID} is stored but cannot be read; it can be deleted"),
    },
    "dead_letters_delete": {404: _NO_DEAD_LETTER},
    "dead_letters_replay_bulk": {
        422: _error(
            422,
            "the body: Object missing required field `dry_run`",
            [{"message": "Object missing required field `dry_run`", "key": "data", "source": "body"}],
        )
    },
    "destinations_get": {404: _NO_DESTINATION},
    "destinations_update": {404: _NO_DESTINATION, 422: _BAD_BODY_FIELD},
    "destinations_pause": {404: _NO_DESTINATION},
    "destinations_resume": {404: _NO_DESTINATION},
    "stats_get": {404: _error(404, "no tenant 'initech' (tenants are the names in RELAY_API_KEYS)")},
    "ops_signing_secret_get": {403: _error(403, "this endpoint takes the admin token")},
    "ops_cluster_get": {403: _error(403, "this endpoint takes the admin token")},
    "ops_store_acknowledge": {403: _error(403, "this endpoint takes the admin token")},
}

# --- Requests and answers, by operation id ----------------------------------------------------------------------

REQUEST_EXAMPLES: dict[str, list[Named]] = {
    "dead_letters_replay_bulk": [
        Named(
            "dry_run", "Count what a replay would send, send nothing", {"reason": "retries_exhausted", "dry_run": True}
        ),
        Named(
            "since",
            "Replay what died of one cause since a moment",
            {"reason": "endpoint_gone", "since": "2026-12-07T00:00:00Z", "dry_run": False},
        ),
    ],
    "destinations_update": [
        Named("caps", "At most 8 attempts in flight, 20 started a second", {"max_in_flight": 8, "rate_per_s": 20.0}),
        Named("no_rate", "Remove the rate, keep the rest", {"rate_per_s": None}),
    ],
}


def _one(name: str, summary: str, value: object) -> list[Named]:
    return [Named(name, summary, _json(value))]


RESPONSE_EXAMPLES: dict[str, list[Named]] = {
    "tasks_submit": [
        *_one("queued", "Accepted: queued, its result to a webhook and a WebSocket", TASK_QUEUED),
        *_one("scheduled", "Accepted to run in a minute (delay_s: 60)", TASK_SCHEDULED),
    ],
    "tasks_list": _one(
        "page",
        "A page, newest first; next_cursor reads the next",
        TaskPage(items=[TASK_SUCCEEDED, TASK_RUNNING], next_cursor=CURSOR),
    ),
    "tasks_get": [
        *_one("succeeded", "A task that has ended with its result", TASK_SUCCEEDED),
        *_one("running", "A task under way, with its progress", TASK_RUNNING),
    ],
    "tasks_cancel": _one("cancelled", "Cancelled while it ran", TASK_CANCELLED),
    "tasks_events": _one(
        "last_page", "The last page: next_after_seq is null", EventList(events=[EVENT_COMPLETED], next_after_seq=None)
    ),
    "tasks_deliveries": [
        *_one("retried", "Not acked on the socket, then a webhook that failed once and was delivered", ATTEMPTS),
        *_one("dead_lettered", "A webhook that became a dead letter", DELIVERIES_WITH_STEPS),
    ],
    "tasks_stream": [
        Named(
            "stream",
            "Subscribed, then each event, then the end",
            "event: subscribed\n"
            f'data: {{"type":"subscribed","task_id":"{TASK_ID}","status":"running","last_seq":0,"recovered":true}}\n\n'
            f"id: 1\nevent: task.completed\ndata: {msgspec.json.encode(EVENT_COMPLETED).decode()}\n\n",
        )
    ],
    "dead_letters_list": _one(
        "page", "The last page, newest first", DeadLetterPage(items=[DEAD_LETTER], next_cursor=None)
    ),
    "dead_letters_get": _one("dead_letter", "A completed event whose receiver never answered", DEAD_LETTER),
    "dead_letters_replay": _one("replayed", "Sent again on a fresh schedule", ReplayOne(replayed=1)),
    "dead_letters_replay_bulk": [
        *_one("dry_run", "A dry run: what matched, nothing sent", ReplayResult(matched=12, replayed=0)),
        *_one("replayed", "Every match sent again", ReplayResult(matched=12, replayed=12)),
    ],
    "destinations_list": _one(
        "page", "Worst first", DestinationPage(items=[DESTINATION_OPEN, DESTINATION], next_cursor=None)
    ),
    "destinations_get": [
        *_one("healthy", "Delivering, within its caps", DESTINATION),
        *_one("open", "Its circuit is open: webhooks held, one probe at next_probe_at", DESTINATION_OPEN),
    ],
    "destinations_update": _one("capped", "With its new caps", DESTINATION_CAPPED),
    "destinations_pause": _one("paused", "Held: nothing is sent until resume", DESTINATION_PAUSED),
    "destinations_resume": _one("resumed", "Released: the backlog drains within its caps", DESTINATION),
    "stats_get": _one("tenant", "One tenant's figures", STATS),
    "signing_secret_get": _one("secret", "The secret that signs this tenant's webhooks", SigningSecret(secret=SECRET)),
    "signing_secret_rotate": _one(
        "rotated", "The new secret (the old one signs beside it for 24 h)", SigningSecret(secret=ROTATED_SECRET)
    ),
    "ops_signing_secret_get": _one("secret", "The secret that signs operational events", SigningSecret(secret=SECRET)),
    "ops_cluster_get": _one("standalone", "One Redis, two workers, one API node", CLUSTER),
    "ops_store_acknowledge": [Named("acknowledged", "The loss is acknowledged", {"acknowledged": True})],
    "health": [Named("ok", "The process runs", {"status": "ok"})],
    "ready": [
        Named("ready", "Ready", {"status": "ready", "redis": "ok", "broker": "ok", "store": "ok"}),
    ],
    "metrics": [
        Named(
            "exposition",
            "A few of the lines",
            "# HELP relay_tasks_submitted_total Tasks accepted\n"
            "# TYPE relay_tasks_submitted_total counter\n"
            "relay_tasks_submitted_total 18240.0\n"
            "# HELP relay_live_connections WebSockets and event streams open on this API process\n"
            "# TYPE relay_live_connections gauge\n"
            'relay_live_connections{channel="websocket"} 12.0\n'
            'relay_live_connections{channel="sse"} 3.0\n',
        )
    ],
}
# Answers other than the success one that carry no ErrorBody: by operation id, then status.
OTHER_ANSWER_EXAMPLES: dict[str, dict[int, list[Named]]] = {
    "ready": {
        503: [
            Named(
                "not_ready",
                "Redis does not answer",
                {
                    "status": "not ready",
                    "redis": "unavailable: ConnectionError",
                    "broker": "unavailable: ConnectionError",
                    "store": "ok",
                },
            )
        ]
    },
}

# --- What Relay posts -------------------------------------------------------------------------------------------

WEBHOOK_EXAMPLES: dict[EventType, Any] = {
    EventType.COMPLETED: _json(EVENT_COMPLETED),
    EventType.FAILED: _json(EVENT_FAILED),
    EventType.CANCELLED: _json(EVENT_CANCELLED),
    EventType.PROGRESS: _json(EVENT_PROGRESS),
    EventType.RETRYING: _json(EVENT_RETRYING),
}
OPS_EVENT_EXAMPLES: dict[str, Any] = {
    "destination.opened": _json(
        OpsEvent(id=OPS_EVENT_ID, type="destination.opened", created_at=_at(12), data=DESTINATION_OPEN)
    ),
    "destination.recovered": _json(
        OpsEvent(
            id=OPS_EVENT_ID,
            type="destination.recovered",
            created_at=_at(95),
            data=msgspec.structs.replace(
                DESTINATION_OPEN,
                state=DestinationState.HEALTHY,
                consecutive_failures=0,
                last_success_at=_at(95),
                opened_at=None,
                next_probe_at=None,
            ),
        )
    ),
}
