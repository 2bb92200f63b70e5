"""Every Redis key Relay writes, in one place.

All keys share the ``relay:`` prefix so that Relay can live beside the Dramatiq broker (``dramatiq:``)
in one Redis.
"""

from __future__ import annotations

PREFIX = "relay:"

DUE = PREFIX + "due"  # sorted set: event id -> unix time its next webhook attempt is due (or its lease ends)
DEAD_LETTERS = PREFIX + "dl:all"  # sorted set: dead letter id -> dead_at (ms)
STATS = PREFIX + "stats"  # hash of counters
LATENCY = PREFIX + "latency"  # hash: histogram bucket -> count, plus sum and count


def task(task_id: str) -> str:
    return f"{PREFIX}task:{task_id}"


def events(task_id: str) -> str:
    return f"{PREFIX}events:{task_id}"


def attempts(task_id: str) -> str:
    return f"{PREFIX}attempts:{task_id}"


def delivery(event_id: str) -> str:
    return f"{PREFIX}dlv:{event_id}"


def dead_letter(dl_id: str) -> str:
    return f"{PREFIX}dl:{dl_id}"


def dead_letters_of(tenant: str) -> str:
    return f"{PREFIX}dl:tenant:{tenant}"


def dead_letter_of_event(event_id: str) -> str:
    return f"{PREFIX}dl:event:{event_id}"


def secrets(tenant: str) -> str:
    return f"{PREFIX}secrets:{tenant}"


def idempotency(tenant: str, key_digest: str) -> str:
    return f"{PREFIX}idem:{tenant}:{key_digest}"


def rate(tenant: str) -> str:
    return f"{PREFIX}rate:{tenant}"


def subscribers(task_id: str) -> str:
    """Set of sockets (anywhere in the cluster) that follow a task; expires unless their node refreshes it."""
    return f"{PREFIX}subs:{task_id}"


def ack_marker(event_id: str) -> str:
    """Present while an event's delivery waits for a socket's ack."""
    return f"{PREFIX}ack:{event_id}"


LIVE_PATTERN = PREFIX + "live:*"


def task_channel(task_id: str) -> str:
    """Pub/sub channel of a task's live events."""
    return f"{PREFIX}live:{task_id}"
