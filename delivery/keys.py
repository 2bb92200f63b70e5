"""Every Redis key Relay writes, in one place.

All keys share the ``relay:`` prefix so that Relay can live beside the Dramatiq broker (``dramatiq:``)
in one Redis.
"""

from __future__ import annotations

PREFIX = "relay:"

# Sorted set: event id -> unix time it is next looked at. It holds deliveries waiting for a socket's ack (until
# their ack timeout) and webhooks on their way to their destination (replays); a webhook owed to a destination
# waits in that destination's own keys (see destination_keys).
DUE = PREFIX + "due"
DEAD_LETTERS = PREFIX + "dl:all"  # sorted set: dead letter id -> dead_at (ms)
STATS = PREFIX + "stats"  # hash of counters
LATENCY = PREFIX + "latency"  # hash: histogram bucket -> count, plus sum and count
# Every accepted task that has not ended, by the time it must show progress: a grace after it was enqueued
# while queued, the end of its run's lease while running. Overdue entries are enqueued again (see
# service.tasks.ledger); a task leaves the set in the step that ends it. The set, not the broker's queue,
# is the record of owed work.
TASKS = PREFIX + "tasks:all"  # sorted set: task id -> created_at (ms), for lists; trimmed as records expire
SCHEDULED_TASKS = PREFIX + "tasks:scheduled"  # sorted set: task id -> unix time it may start (run_at)
OWED_TASKS = PREFIX + "tasks:owed"  # sorted set: task id -> unix time it is overdue
REQUEUES = PREFIX + "tasks:requeues"  # hash: task id -> times the sweeper enqueued it again
# Never holds anything: a DEL of it asks Redis whether it takes writes now (see service.api.store_watch).
WRITE_PROBE = PREFIX + "write-probe"


# Destinations (see delivery/destination.lua): every destination that has something to do, by when; all of them;
# each tenant's.
DESTINATIONS_READY = PREFIX + "dst:ready"  # sorted set: destination id -> unix time it next has work
DESTINATIONS = PREFIX + "dst:all"  # set of destination ids
DESTINATIONS_OF_PREFIX = PREFIX + "dst:tenant:"
OPS_SECRETS = PREFIX + "ops:secrets"  # the operator's signing secrets (operational events)


def destinations_of(tenant: str) -> str:
    return DESTINATIONS_OF_PREFIX + tenant


def destination_keys(destination_id: str) -> list[str]:
    """A destination's meta, due, flight and deadline keys, under one hash tag (the order the scripts take)."""
    tag = f"{PREFIX}{{{destination_id}}}:"
    return [tag + "meta", tag + "due", tag + "flight", tag + "deadline"]


def task(task_id: str) -> str:
    return f"{PREFIX}task:{task_id}"


def lease(task_id: str) -> str:
    """The token of the run that holds a task (expires unless that run renews it)."""
    return f"{PREFIX}lease:{task_id}"


def tasks_of(tenant: str) -> str:
    """Sorted set of a tenant's tasks by creation time (ms), for its lists."""
    return f"{PREFIX}tasks:tenant:{tenant}"


def scheduled_of(tenant: str) -> str:
    """Sorted set of a tenant's tasks waiting for their run_at (task id -> that unix time), for its figures; entries
    whose time has passed are trimmed as new ones come (the shared ``SCHEDULED_TASKS`` is the one promoted)."""
    return f"{PREFIX}tasks:scheduled:tenant:{tenant}"


def stats_of(tenant: str) -> str:
    """Hash of a tenant's own task counters (the same fields as ``STATS`` counts for every tenant)."""
    return f"{PREFIX}stats:tenant:{tenant}"


def stats_history(tenant: str | None) -> str:
    """List of recent snapshots of the counters (every tenant's, or one tenant's), newest first, for rates."""
    return f"{PREFIX}stats:history:" + ("all" if tenant is None else f"tenant:{tenant}")


def open_tasks_of(tenant: str) -> str:
    """Sorted set of a tenant's tasks that have not ended, by creation time (ms)."""
    return f"{PREFIX}open:{tenant}"


def events(task_id: str) -> str:
    return f"{PREFIX}events:{task_id}"


def attempts(task_id: str) -> str:
    return f"{PREFIX}attempts:{task_id}"


def delivery_steps(task_id: str) -> str:
    """List of the task's webhooks' dead-lettered and replayed steps, oldest first (kept as long as its attempts)."""
    return f"{PREFIX}steps:{task_id}"


def webhook_head(task_id: str) -> str:
    """The task's webhook owed now ('p:' or 'f:' and its event id); newer ones wait in its line (task_line.lua)."""
    return f"{PREFIX}wh:head:{task_id}"


def webhook_line(task_id: str) -> str:
    """List of the task's webhooks waiting behind its head, oldest first."""
    return f"{PREFIX}wh:line:{task_id}"


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


def tenant_streams(tenant: str) -> str:
    """Sorted set of a tenant's open WebSockets and streams on every API node: member -> unix time it expires
    unless its node refreshes it (a node that dies leaves members that expire)."""
    return f"{PREFIX}streams:{tenant}"


# Hash: the store's epoch, written once when the store is new (see delivery.epoch).
EPOCH = PREFIX + "epoch"


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
