"""What the client raises, one tree::

RelayError                      everything below; catch this to catch any of them
├── ApiError                    Relay answered with an error status: .status, .detail
│   ├── BadRequest              400, and 413 (a body over RELAY_MAX_BODY_BYTES)
│   │   └── Invalid             422: an unknown kind, an input that does not fit it, a bad webhook URL...
│   ├── Unauthorized            401: no key, or one Relay does not know
│   ├── Forbidden               403: a key that may not do this (a tenant's key on an operator's path)
│   ├── NotFound                404: no such task, dead letter or destination (or another tenant's)
│   ├── Conflict                409: a task that has already ended, a record that cannot be read
│   ├── RateLimited             429: over a rate or a cap; .retry_after_s
│   └── Unavailable             503: the store is away, stalled or full; .retry_after_s
├── TransportError              no answer: the request may or may not have reached Relay
│   ├── ConnectError            no connection could be made
│   └── RequestTimeout          connected, but no answer in time
├── WaitTimeout                 ``wait`` gave up before the task ended (the task goes on)
├── UnexpectedAnswer            a 2xx answer this client cannot read (a proxy's page, a much newer Relay)
└── WebhookVerificationError    a webhook whose signature, timestamp or body does not verify

Submissions and reads are retried (same ``Idempotency-Key``) on transport errors, 429 and 503 before any of those
reaches you; what you catch is what retrying for the whole deadline did not fix.
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "ConnectError",
    "Forbidden",
    "Invalid",
    "NotFound",
    "RateLimited",
    "RelayError",
    "RequestTimeout",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "UnexpectedAnswer",
    "WaitTimeout",
    "WebhookVerificationError",
]


class RelayError(Exception):
    """The root of everything this library raises on purpose."""


class ApiError(RelayError):
    """Relay answered with an error status.

    Attributes:
        status: The HTTP status code.
        detail: Relay's human-readable explanation (the ``detail`` of its JSON error body).
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class BadRequest(ApiError):
    """400 or 413: a request Relay cannot take as it is."""


class Invalid(BadRequest):
    """422: the request is well-formed but not valid (the detail says which field and why)."""


class Unauthorized(ApiError):
    """401: no API key, or one Relay does not know."""


class Forbidden(ApiError):
    """403: the key is known but may not do this."""


class NotFound(ApiError):
    """404: no such thing, or not one this key may see."""


class Conflict(ApiError):
    """409: the thing is not in a state that allows this (a task that has already ended cannot be cancelled)."""


class _RetryAfter(ApiError):
    def __init__(self, status: int, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(status, detail)
        self.retry_after_s = retry_after_s


class RateLimited(_RetryAfter):
    """429: over the tenant's submit rate, its open tasks or its streams.

    Attributes:
        retry_after_s: The wait Relay asked for (``Retry-After``), or None when it named none.
    """


class Unavailable(_RetryAfter):
    """503: Relay's store is away, stalled or full. A submission that got this may have been accepted: submit again
    with the same ``idempotency_key`` (this library does, until its retry deadline).

    Attributes:
        retry_after_s: The wait Relay asked for (``Retry-After``), or None when it named none.
    """


class TransportError(RelayError):
    """No answer came: the connection failed, broke, or timed out. A request that was sent may have been acted on."""


class ConnectError(TransportError):
    """No connection could be made (refused, unreachable, a name that does not resolve): nothing was sent."""


class RequestTimeout(TransportError):
    """The connection, the request or its answer took longer than the client's timeout."""


class WaitTimeout(RelayError, TimeoutError):
    """``wait`` gave up before the task ended. The task itself goes on; wait again or read it later."""

    def __init__(self, task_id: str, timeout_s: float) -> None:
        super().__init__(f"task {task_id} did not end within {timeout_s:g} s")
        self.task_id = task_id
        self.timeout_s = timeout_s


class UnexpectedAnswer(RelayError):
    """Relay (or something in front of it) answered 2xx with a body that is not what this call returns."""


class WebhookVerificationError(RelayError):
    """A webhook that must not be trusted: headers missing, a timestamp too old or too far ahead, or no signature
    that matches the body with any of the secrets given. The message says which, never a secret."""
