"""Who is calling: a tenant (API key) or an operator (admin token), from ``Authorization: Bearer``."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

from service.settings import Settings


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str | None  # None for an operator

    @property
    def is_operator(self) -> bool:
        return self.tenant is None

    def can_see(self, tenant: str) -> bool:
        return self.tenant is None or self.tenant == tenant


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self._keys = dict(settings.api_keys)
        self._admin = settings.admin_token

    def identify(self, connection: ASGIConnection) -> Principal:  # type: ignore[type-arg]
        token = bearer_token(connection)
        if token is None:
            raise NotAuthorizedException("send Authorization: Bearer <api key or admin token>")
        principal = self.lookup(token)
        if principal is None:
            raise NotAuthorizedException("unknown API key or token")
        return principal

    def lookup(self, token: str) -> Principal | None:
        if self._admin and hmac.compare_digest(token.encode(), self._admin.encode()):
            return Principal(tenant=None)
        tenant = self._lookup(token)
        return None if tenant is None else Principal(tenant=tenant)

    def _lookup(self, token: str) -> str | None:
        # Compare against every key so that timing does not tell how much of a key was right.
        found = None
        for key, tenant in self._keys.items():
            if hmac.compare_digest(token.encode(), key.encode()):
                found = tenant
        return found


@dataclass(frozen=True, slots=True)
class Reader:
    """Who reads a task: its tenant by API key, an operator by the admin token, or anyone holding that one
    task's ``ws_token``.

    The browser client reads a task it follows (when its events are no longer retained) with the task's
    ``ws_token``, the capability it already has, rather than with the tenant's API key.
    """

    principal: Principal | None
    token: str | None

    def may_read(self, tenant: str, ws_token: str | None) -> bool:
        if self.principal is not None:
            return self.principal.can_see(tenant)
        return (
            self.token is not None
            and ws_token is not None
            and hmac.compare_digest(self.token.encode(), ws_token.encode())
        )


def bearer_token(connection: ASGIConnection) -> str | None:  # type: ignore[type-arg]
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def require_tenant(principal: Principal) -> str:
    if principal.tenant is None:
        raise PermissionDeniedException("this endpoint takes a tenant's API key, not the admin token")
    return principal.tenant


def require_operator(principal: Principal) -> None:
    if principal.tenant is not None:
        raise PermissionDeniedException("this endpoint takes the admin token")


# A tenant filter that matches nothing: what a tenant gets when it asks for another tenant's things.
NO_TENANT = "\x00no-such-tenant"


def tenant_scope(principal: Principal, tenant: str | None) -> str | None:
    """The tenant filter in force: an operator's as asked; a tenant's own, which its filter never widens."""
    if principal.tenant is None:
        return tenant
    if tenant is not None and tenant != principal.tenant:
        return NO_TENANT
    return principal.tenant
