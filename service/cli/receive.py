"""``relay receive``: a webhook receiver on this machine, to see what Relay sends before a receiver of your own exists.

It prints one line per webhook (when, event type, task, whether its signature checks out with the tenant's secret,
the event's data) and answers 204, or 401 to a webhook whose signature does not check out (as a real receiver
should, so that Relay retries it). Relay sends to it only when loopback callbacks are allowed
(``relay serve --allow-private-callbacks``).
"""

from __future__ import annotations

import hmac
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import click
import msgspec

from delivery.errors import InvalidSecret
from delivery.signing import secret_bytes, sign
from service.cli.client import API_KEY_ENV, api_options, open_relay

DEFAULT_PORT = 9000
# A webhook-timestamp further than this from now is refused (Standard Webhooks' tolerance against replays).
TIMESTAMP_TOLERANCE_S = 300
# The largest body read; a webhook is an Event of at most a few hundred KB.
MAX_BODY_BYTES = 16 * 1024 * 1024
# Characters of an event's data printed on its line.
DATA_CHARS = 200


def signature_ok(secret: str, headers: Any, body: bytes, *, now: float | None = None) -> bool:
    """Whether the Standard Webhooks headers sign ``body`` with ``secret`` (one of the signatures suffices: Relay
    signs with the old secret too for a while after a rotation) and its timestamp is recent."""
    msg_id, stamp, signatures = (headers.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    # ASCII digits only, and few of them (str.isdigit takes '²', and a 400-digit time overflows a float).
    if not (msg_id and stamp and signatures and len(stamp) <= 12 and stamp.isascii() and stamp.isdigit()):
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > TIMESTAMP_TOLERANCE_S:
        return False
    expected = sign(secret, msg_id, int(stamp), body)
    return any(hmac.compare_digest(expected, given) for given in signatures.split())


def _summary(body: bytes) -> tuple[str, str, str]:
    """The event's type, task and data (shortened), or what can be said of a body that is not an event."""
    try:
        event = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return "(not JSON)", "-", body[:DATA_CHARS].decode(errors="replace")
    if not isinstance(event, dict):
        return "(not an event)", "-", body[:DATA_CHARS].decode(errors="replace")
    data = msgspec.json.encode(event.get("data")).decode()
    if len(data) > DATA_CHARS:
        data = data[: DATA_CHARS - 1] + "…"
    return str(event.get("type", "?")), str(event.get("task_id", "-")), data


def _handler(secret: str, lock: threading.Lock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "relay-receive"

        def do_POST(self) -> None:
            declared = self.headers.get("content-length") or "0"
            if not (declared.isascii() and declared.isdigit()):
                self._answer(400)
                return
            length = int(declared)
            if length > MAX_BODY_BYTES:
                self._answer(413)
                return
            body = self.rfile.read(length)
            verified = signature_ok(secret, self.headers, body)
            kind, task, data = _summary(body)
            at = datetime.now(UTC).strftime("%H:%M:%SZ")
            check = "signature ok" if verified else "SIGNATURE WRONG (answered 401)"
            with lock:
                click.echo(f"{at}  {self.path}  {kind}  {task}  {check}  {data}")
            self._answer(204 if verified else 401)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per webhook is printed above; no access log beside it

    return Handler


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A sender that hangs up (Relay's attempt timed out, a client reset) is not worth a traceback on the screen.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def make_server(host: str, port: int, secret: str) -> ThreadingHTTPServer:
    """The receiver, listening on ``host:port``, checking signatures with ``secret``; serve_forever() runs it."""
    server = _Server((host, port), _handler(secret, threading.Lock()))
    server.daemon_threads = True
    return server


def _fetch_secret(url: str, token: str) -> str:
    with open_relay(url, token) as relay:
        return relay.signing_secret.get()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--secret",
    metavar="WHSEC",
    help="The signing secret to check signatures with (default: the tenant's, from the API with --token).",
)
@api_options(
    API_KEY_ENV, "A tenant's API key, to fetch its signing secret (unless --secret gives one).", token_required=False
)
def receive(host: str, port: int, secret: str | None, url: str, token: str | None) -> None:
    """Receive webhooks on this machine: print each one and check its signature (until Ctrl-C).

    Point a task's webhook.url at it (http://127.0.0.1:9000/anything). Relay refuses loopback callback URLs
    unless it runs with --allow-private-callbacks (RELAY_ALLOW_PRIVATE_CALLBACKS=true), for development only.
    """
    if secret is None:
        if token is None:
            raise click.UsageError(f"give --secret, or an API key (--token or {API_KEY_ENV}) to fetch it")
        secret = _fetch_secret(url, token)
    try:
        secret_bytes(secret)
    except InvalidSecret as exc:
        raise click.BadParameter(str(exc), param_hint="--secret") from None
    try:
        server = make_server(host, port, secret)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    shown = f"[{host}]" if ":" in host else host
    click.echo(
        f"Receiving webhooks at http://{shown}:{port}/ (signatures checked with the tenant's secret); Ctrl-C stops"
    )
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
