"""``relay signing-secret``: the secret a tenant's receivers verify its webhooks with, over the HTTP API."""

from __future__ import annotations

import click

from service.cli.client import API_KEY_ENV, api_options, open_relay

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
    with open_relay(url, token) as relay:
        secret = relay.signing_secret.rotate() if rotate else relay.signing_secret.get()
    click.echo(secret)
    if rotate:
        click.echo(f"relay: rotated; the old secret keeps signing beside this one for {ROTATION_OVERLAP}", err=True)
