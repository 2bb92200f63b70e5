"""Relay's exceptions, one tree::

RelayError
├── ConfigError                 a setting that cannot work
├── InvalidCallbackUrl          a webhook URL that is not absolute http(s)
├── DeliveryError               a webhook that cannot be delivered
│   ├── EndpointGone            the receiver answered 410
│   └── ForbiddenAddress        the URL reaches a private, loopback, link-local or metadata address
├── LeaseLost                   a run may not write its task: it has ended, or another run holds it
├── RecordChanged               a record was written since it was read (read it again and retry)
├── UnreadableRecord            a stored record that cannot be decoded (readers skip it and count it)
├── InvalidCursor               a list cursor this API did not hand out
├── InvalidSecret               a webhook signing secret that is not whsec_ and base64
├── SecretsUnavailable          a tenant's signing secrets cannot be read, and this process never read them
├── NotFound                    no such task / dead letter for this caller
│
│   raised by the programs in service/, beside what they concern:
├── IllegalTransition           a task status change the lifecycle does not allow (service.tasks.store)
├── TenantFull                  a tenant at RELAY_TENANT_MAX_OPEN_TASKS (service.tasks.store; the API's 429)
├── KeyReused                   an Idempotency-Key used before for another request (service.tasks.store; a 422)
├── NotAdmitted                 a new task while the store is full (service.tasks.store; the API's 503)
├── TaskFailure                 what the built-in ``fail`` kind raises (service.kinds.builtin)
├── Stopping                    a worker shuts down while a write waits for Redis (service.worker.runtime)
├── FollowError                 ``relay submit --wait`` cannot follow over the socket (service.cli.follow)
└── NotRecovered                a followed task's events are no longer retained (service.cli.follow)

Errors of the HTTP API are Litestar's ``HTTPException`` family, with a ``detail`` for the client; settings
that cannot work are a ``ConfigError`` naming the variable.
"""

from __future__ import annotations


class RelayError(Exception):
    """The root of every error Relay raises on purpose."""


class ConfigError(RelayError):
    """A setting is missing or cannot work."""


class InvalidCallbackUrl(RelayError):
    """A callback URL that is not an absolute http(s) URL."""


class DeliveryError(RelayError):
    """A webhook cannot be delivered."""


class EndpointGone(DeliveryError):
    """The receiver answered 410 Gone: stop trying."""

    def __init__(self, url: str) -> None:
        super().__init__(f"{url} answered 410 Gone")
        self.url = url


class ForbiddenAddress(DeliveryError):
    """The callback's host is, or resolves to, an address Relay must not reach."""

    def __init__(self, host: str, address: str) -> None:
        where = f"{host} is" if host.strip("[]") == address else f"{host} resolves to {address},"
        super().__init__(f"{where} a private, loopback, link-local or metadata address")
        self.host = host
        self.address = address


class LeaseLost(RelayError):
    """A run tried to write a task it no longer holds: the task has ended, or another run took it over."""

    def __init__(self, task_id: str, *, ended: bool) -> None:
        super().__init__(f"task {task_id} {'has ended' if ended else 'is held by another run'}")
        self.task_id = task_id
        self.ended = ended


class RecordChanged(RelayError):
    """A write from outside a run (a cancel) found the record changed since it was read: read it again."""


class UnreadableRecord(RelayError):
    """A stored record that cannot be decoded (nested too deep, or not what it should be).

    ``tenant`` is its owner when that much of it could still be read, so that the owner can delete it.
    """

    def __init__(self, key: str, *, tenant: str | None = None, reason: str = "") -> None:
        super().__init__(f"{key} cannot be read{f' ({reason})' if reason else ''}")
        self.key = key
        self.tenant = tenant


class NotFound(RelayError):
    """No such object for this caller (another tenant's ids answer the same)."""


class InvalidCursor(RelayError, ValueError):
    """A list cursor that this API did not hand out."""


class InvalidSecret(RelayError, ValueError):
    """A webhook signing secret that is not ``whsec_`` followed by non-empty base64."""


class SecretsUnavailable(RelayError):
    """The signing secrets of ``tenant`` (None: the operator's) cannot be read, their node being away, and this
    process has none of its own to sign with: the attempt waits for its lease to run out and is made again."""

    def __init__(self, tenant: str | None, cause: str) -> None:
        whose = f"tenant {tenant}" if tenant is not None else "the operator"
        super().__init__(f"the signing secrets of {whose} cannot be read ({cause}) and this process has none yet")
        self.tenant = tenant
        self.cause = cause
