"""``/v1/signing-secret``: the secret that signs a tenant's webhooks, and its rotation."""

from __future__ import annotations

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency

from schemas.api import SigningSecret
from service.api.auth import Principal, require_tenant
from service.api.openapi import TENANT_ONLY, errors
from service.api.state import ApiState


class SigningSecretController(Controller):
    path = "/v1/signing-secret"
    tags = ["signing secret"]
    security = TENANT_ONLY

    @get(
        "/",
        operation_id="signing_secret_get",
        response_description="The current secret",
        summary="The secret that signs this tenant's webhooks",
        description="Verify each webhook's `webhook-signature` with it (Standard Webhooks). During a rotation the old "
        "secret signs beside this one for 24 h.",
        responses=errors(403),
    )
    async def signing_secret(
        self, state_: NamedDependency[ApiState], principal: NamedDependency[Principal]
    ) -> Response[SigningSecret]:
        secret = await state_.secrets.current(require_tenant(principal))
        return Response(SigningSecret(secret=secret), headers={"Cache-Control": "no-store"})

    @post(
        "/rotate",
        operation_id="signing_secret_rotate",
        response_description="The new secret",
        status_code=200,
        summary="Rotate the signing secret (the old one signs 24 h more)",
        description="Answers the new secret, which `GET /v1/signing-secret` returns from then on; webhooks carry a "
        "signature by each secret for 24 h, so receivers can switch without losing one.",
        responses=errors(403),
    )
    async def rotate(
        self, state_: NamedDependency[ApiState], principal: NamedDependency[Principal]
    ) -> Response[SigningSecret]:
        secret = await state_.secrets.rotate(require_tenant(principal))
        return Response(SigningSecret(secret=secret), headers={"Cache-Control": "no-store"})
