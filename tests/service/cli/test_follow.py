"""``relay submit --wait``'s follower against a newer Relay's socket: frames, statuses and event types it does not
know do not stop it (a scripted /v1/ws on a real local port; the real one is tested in tests/integration)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from relay_client.types import Event, EventType
from websockets.sync.server import Server, ServerConnection, serve

from service.cli.follow import follow_task


def _event(seq: int, type_: str, data: object) -> dict[str, Any]:
    return {
        "id": f"evt_{seq}",
        "type": type_,
        "task_id": "task_1",
        "seq": seq,
        "created_at": "2026-12-07T00:00:00Z",
        "data": data,
    }


class NewerRelay:
    """Answers one subscribe as a newer Relay might: a frame type, a status and an event type this CLI does not know."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    def handle(self, ws: ServerConnection) -> None:
        self.received.append(json.loads(ws.recv()))
        ws.send(json.dumps({"type": "hello", "features": ["priorities"]}))
        ws.send(
            json.dumps(
                {
                    "type": "subscribed",
                    "task_id": "task_1",
                    "status": "escalated",
                    "last_seq": 0,
                    "recovered": True,
                    "node": "api-2",
                }
            )
        )
        ws.send(json.dumps({"type": "event", "event": _event(1, "task.escalated", {"to": "ops"})}))
        self.received.append(json.loads(ws.recv()))
        ws.send(json.dumps({"type": "event", "event": _event(2, "task.completed", {"status": "succeeded"})}))
        self.received.append(json.loads(ws.recv()))


@pytest.fixture
def newer_relay() -> Iterator[tuple[str, NewerRelay]]:
    relay = NewerRelay()
    server: Server = serve(relay.handle, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.socket.getsockname()[1]}", relay
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_a_newer_relays_frames_statuses_and_event_types_do_not_stop_the_follower(
    newer_relay: tuple[str, NewerRelay],
) -> None:
    url, relay = newer_relay
    seen: list[Event] = []

    final = follow_task(url, "task_1", "wst_1", on_event=seen.append, deadline=None)

    assert [(e.seq, e.type.value, e.type.known) for e in seen] == [
        (1, "task.escalated", False),
        (2, "task.completed", True),
    ]
    assert final.type is EventType.COMPLETED
    assert [frame["type"] for frame in relay.received] == ["subscribe", "ack", "ack"]  # each event acked, once
    assert [frame.get("event_id") for frame in relay.received[1:]] == ["evt_1", "evt_2"]
