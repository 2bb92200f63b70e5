"""``relay receive``: the signature check a receiver on this machine makes, and what it answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from click.testing import CliRunner

from delivery.signing import generate_secret, webhook_headers
from service.cli.receive import make_server, receive, signature_ok
from service.processes import free_port

BODY = b'{"id":"evt_1","type":"task.completed","task_id":"task_1","seq":1,"data":{"status":"succeeded"}}'


def test_a_signature_checks_out_with_any_live_secret_and_a_recent_timestamp() -> None:
    old, new, other = generate_secret(), generate_secret(), generate_secret()
    now = int(time.time())
    rotated = webhook_headers([new, old], "evt_1", now, BODY, user_agent="relay/test")

    assert signature_ok(old, rotated, BODY)
    assert signature_ok(new, rotated, BODY)
    assert not signature_ok(other, rotated, BODY)
    assert not signature_ok(new, rotated, BODY + b" ")
    assert not signature_ok(new, rotated, BODY, now=now + 301)  # too old: a replay of a captured webhook
    assert not signature_ok(new, {k: v for k, v in rotated.items() if k != "webhook-signature"}, BODY)


@pytest.fixture
def running() -> Iterator[tuple[str, str]]:
    """The receiver ``relay receive`` runs, with a secret of its own: its URL and the secret."""
    secret = generate_secret()
    server = make_server("127.0.0.1", 0, secret)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", secret
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_receive_answers_204_to_a_signed_webhook_and_401_to_a_forged_one(
    running: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, secret = running

    def post(key: str) -> int:
        headers = webhook_headers([key], "evt_1", int(time.time()), BODY, user_agent="relay/test")
        return httpx.post(url + "/relay", content=BODY, headers=headers, timeout=5).status_code

    assert post(secret) == 204
    assert post(generate_secret()) == 401
    signed, forged = capsys.readouterr().out.splitlines()
    assert "/relay  task.completed  task_1  signature ok" in signed
    assert "SIGNATURE WRONG (answered 401)" in forged


def test_receive_answers_garbled_headers_instead_of_dropping_the_connection(running: tuple[str, str]) -> None:
    url, secret = running
    headers = webhook_headers([secret], "evt_1", int(time.time()), BODY, user_agent="relay/test")
    for stamp in (b"9" * 400, b"\xb2", b"-5", b""):  # an overflow, '²' (a digit to str.isdigit), a sign, nothing
        answer = httpx.post(url + "/relay", content=BODY, headers={**headers, "webhook-timestamp": stamp}, timeout=5)
        assert answer.status_code == 401, stamp
    # A content-length that is not a number (HTTP clients will not send one: a raw socket does).
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"POST /relay HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400"), "no answer"


def test_receive_needs_a_secret_or_a_key_to_fetch_it() -> None:
    result = CliRunner().invoke(receive, ["--port", str(free_port())], env={"RELAY_API_KEY": None})

    assert result.exit_code == 2
    assert "give --secret, or an API key" in result.output
