"""The Python client of Relay, a callback delivery service.

``Relay`` blocks; ``AsyncRelay`` is the same surface for asyncio. ``verify_webhook`` checks a webhook Relay sent.
Wire types are in :mod:`relay_client.types`; errors in :mod:`relay_client.errors` (drawn as a tree there).
"""

from __future__ import annotations

from relay_client._async import AsyncRelay, AsyncSubmittedTask
from relay_client._core import __version__
from relay_client._retry import DEFAULT_RETRIES, NO_RETRIES, Retries
from relay_client._sync import Relay, SubmittedTask
from relay_client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectError,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    RelayError,
    RequestTimeout,
    TransportError,
    Unauthorized,
    Unavailable,
    UnexpectedAnswer,
    WaitTimeout,
    WebhookVerificationError,
)
from relay_client.types import (
    Attempt,
    AttemptList,
    DeadLetter,
    DeadLetterReason,
    Destination,
    DestinationState,
    Event,
    EventType,
    ReplayResult,
    Stats,
    Task,
    TaskStatus,
)
from relay_client.webhooks import verify_webhook

__all__ = [
    "DEFAULT_RETRIES",
    "NO_RETRIES",
    "ApiError",
    "AsyncRelay",
    "AsyncSubmittedTask",
    "Attempt",
    "AttemptList",
    "BadRequest",
    "Conflict",
    "ConnectError",
    "DeadLetter",
    "DeadLetterReason",
    "Destination",
    "DestinationState",
    "Event",
    "EventType",
    "Forbidden",
    "Invalid",
    "NotFound",
    "RateLimited",
    "Relay",
    "RelayError",
    "ReplayResult",
    "RequestTimeout",
    "Retries",
    "Stats",
    "SubmittedTask",
    "Task",
    "TaskStatus",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "UnexpectedAnswer",
    "WaitTimeout",
    "WebhookVerificationError",
    "__version__",
    "verify_webhook",
]
