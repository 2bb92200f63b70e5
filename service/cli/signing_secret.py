"""``relay signing-secret``: the secret a tenant's receivers verify its webhooks with, over the HTTP API."""

from __future__ import annotations

import click

from schemas.api import SigningSecret
from service.cli.http import API_KEY_ENV, api_options, call, client, decode

# How long a rotated-out secret keeps signing beside the new one (the API's promise, told to the user).
ROTATION_OVERLAP = "24 h"


@click.command("signing-secret")
@click.option(
    "--rotate",
    is_flag=True,
    help=f"Make a new secret; the old one keeps signing beside it for {ROTATION_OVERLAP}, so receivers can move over.",
)
@api_options(API_KEY_ENV, "A tenant's API key (the secret is the tenant's own).")
def signing_secret(rotate: bool, url: str, token: str) -> None:
    """Print the tenant's webhook signing secret (whsec_...), alone on a line, for a receiver to verify with.

    Every webhook carries webhook-id, webhook-timestamp and webhook-signature (Standard Webhooks); a receiver
    checks them with this secret, e.g. standardwebhooks' Webhook(secret).verify(body, headers).
    """
    with client(url, token) as http:
        method, path = ("POST", "/v1/signing-secret/rotate") if rotate else ("GET", "/v1/signing-secret")
        answer = call(http, method, path)
    click.echo(decode(answer, SigningSecret).secret)
    if rotate:
        click.echo(f"relay: rotated; the old secret keeps signing beside this one for {ROTATION_OVERLAP}", err=True)
