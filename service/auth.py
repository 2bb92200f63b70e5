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
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise NotAuthorizedException("send Authorization: Bearer <api key or admin token>")
        if self._admin and hmac.compare_digest(token.encode(), self._admin.encode()):
            return Principal(tenant=None)
        tenant = self._lookup(token)
        if tenant is None:
            raise NotAuthorizedException("unknown API key or admin token")
        return Principal(tenant=tenant)

    def _lookup(self, token: str) -> str | None:
        # Compare against every key so that timing does not tell how much of a key was right.
        found = None
        for key, tenant in self._keys.items():
            if hmac.compare_digest(token.encode(), key.encode()):
                found = tenant
        return found


def require_tenant(principal: Principal) -> str:
    if principal.tenant is None:
        raise PermissionDeniedException("this endpoint takes a tenant's API key, not the admin token")
    return principal.tenant
