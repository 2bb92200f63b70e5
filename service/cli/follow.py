"""Follow one task over ``/v1/ws`` from the shell (``relay submit --wait``): the protocol's client, in Python.

It resumes from its last ``seq`` after any drop, with full-jitter backoff (0.5 s doubling to 20 s), answers
pings, acks every event after handling it, and stops at the task's final event.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import msgspec
from relay_client.types import ErrorFrame, Event, EventFrame, PingFrame, Subscribed
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from delivery.errors import RelayError
from schemas.ws import Ack, Pong, Subscribe

# Reconnect backoff: full jitter between 0 and min(MAX, BASE * 2**attempt).
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 20.0
# How long to keep trying when the very first connection fails (the API may be restarting).
FIRST_CONNECT_PATIENCE_S = 30.0
# How long one receive may wait before the deadline is looked at again.
RECEIVE_SLICE_S = 1.0


# What the server sends, read as the client library reads it: a newer Relay's event types and statuses decode.
ServerFrame = Subscribed | EventFrame | PingFrame | ErrorFrame
_decode = msgspec.json.Decoder(ServerFrame).decode
_encode = msgspec.json.Encoder().encode


class FollowError(RelayError):
    """The task cannot be followed over the socket (refused, or the endpoint cannot be reached at all)."""


class NotRecovered(RelayError):
    """Some of the task's events are no longer retained: read the task over HTTP instead."""


def ws_url(base_url: str) -> str:
    if base_url.startswith("https://"):
        return "wss://" + base_url.removeprefix("https://").rstrip("/") + "/v1/ws"
    return "ws://" + base_url.removeprefix("http://").rstrip("/") + "/v1/ws"


def follow_task(
    base_url: str,
    task_id: str,
    token: str,
    *,
    on_event: Callable[[Event], None],
    deadline: float | None = None,
) -> Event:
    """Return the task's final event, calling ``on_event`` for every event once, in ``seq`` order.

    Raises:
        FollowError: the first connection failed, or the server refused the subscription.
        NotRecovered: events were lost to retention.
        TimeoutError: ``deadline`` (a ``time.monotonic()`` value) passed first.
    """
    last_seq = 0
    attempt = 0
    connected_once = False
    started = time.monotonic()
    while True:
        try:
            with connect(ws_url(base_url), open_timeout=10, compression=None) as ws:
                connected_once = True
                attempt = 0
                ws.send(_encode(Subscribe(task_id=task_id, token=token, after_seq=last_seq)))
                while True:
                    frame = _receive(ws, deadline)
                    if isinstance(frame, PingFrame):
                        ws.send(_encode(Pong()))
                    elif isinstance(frame, ErrorFrame):
                        raise FollowError(f"the server refused to follow {task_id}: {frame.message}")
                    elif isinstance(frame, Subscribed) and not frame.recovered:
                        raise NotRecovered(task_id)
                    elif isinstance(frame, EventFrame) and frame.event.seq > last_seq:
                        on_event(frame.event)
                        last_seq = frame.event.seq
                        ws.send(_encode(Ack(event_id=frame.event.id)))
                        if frame.event.type.final:
                            return frame.event
        except (InvalidStatus, InvalidURI) as exc:
            # The server answered, but not as a Relay socket: no point in trying again.
            raise FollowError(f"cannot open {ws_url(base_url)}: {exc}") from exc
        except (ConnectionClosed, OSError, InvalidHandshake) as exc:
            # Dropped, or the API is restarting: try again, resuming from last_seq.
            if not connected_once and time.monotonic() - started > FIRST_CONNECT_PATIENCE_S:
                raise FollowError(f"cannot open {ws_url(base_url)}: {exc}") from exc
        pause = random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt))
        attempt += 1
        if deadline is not None and time.monotonic() + pause > deadline:
            raise TimeoutError(task_id)
        time.sleep(pause)


def _receive(ws: ClientConnection, deadline: float | None) -> ServerFrame:
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError
        try:
            raw = ws.recv(timeout=RECEIVE_SLICE_S)
        except TimeoutError:
            continue
        try:
            frame: ServerFrame = _decode(raw)
        except msgspec.ValidationError:
            continue  # a frame a newer Relay sends that this follower does not know: nothing it must answer
        return frame
