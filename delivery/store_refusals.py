"""Why Redis refuses writes while it answers reads, and which of Relay's steps still run then.

Redis refuses writes, with an error that names the cause, when:

- ``FULL``: used memory is past ``maxmemory`` with the ``noeviction`` policy (``OOM command not allowed``);
- ``MISCONF``: a background save or an append-only file write failed (``stop-writes-on-bgsave-error``);
- ``READONLY``: it is a read-only replica (a failover made another node the master);
- ``NOREPLICAS``: fewer replicas than ``min-replicas-to-write`` are in sync.

None of them loses anything Relay had written: a Lua step that is refused writes nothing, the API answers 503
with the cause, and the workers retry each refused write until Redis takes it.

A full Redis is the subtle one. Redis checks memory for a script only at its first write, and only when that
write is a command that can grow memory (deny-oom: SET, ZADD, RPUSH, HSET, ...); a first write that cannot (DEL,
ZREM, EXPIRE, SREM, ...) lets the whole script through, however full Redis is (Redis 6.2 and 7 alike; Redis 7's
``#!lua flags=`` would say it up front, but the embedded Redis of ``relay serve`` is 6.2). Relay uses that rule on
purpose, per step:

- Refused when full (their first write is deny-oom): what adds work or grows with a task's data. Submitting
  (``submit_task.lua``), a task's events (progress, retries and its end, ``append_event.lua``, which store its
  result), cancels and replays. The API also stops taking new tasks at a high-water mark below ``maxmemory``
  (``service.api.store_watch``), so that the memory above it is left for the work already accepted to end in.
- Run when full (their first write is one Redis lets through: a ``ZREM`` or ``HDEL`` of a member that never
  exists, where the step has no such write of its own): what keeps accepted work alive and moving without
  growing memory by more than a few bytes per task, or what frees memory. Lease renewal and the broker heartbeat (else a run that waits
  for memory would be taken for dead and its task run twice), taking a task's lease and marking it running,
  Dramatiq's fetch and acks, the sweeper and its enqueues, the webhook claims and the recording of an attempt's
  outcome (else a webhook already sent would be sent again, and a delivered one would keep its stored event),
  a stopping worker giving its runs back.

So with the store full, runs keep their leases and wait (retrying, with a back-off) to write their ends; once
memory is available again (``maxmemory`` raised, or records expired) every one of them ends, once.
"""

from __future__ import annotations

import enum

from redis.exceptions import ReadOnlyError, RedisError


class WriteRefusal(enum.Enum):
    """Why Redis refuses writes; the value is the reason label of metrics and logs."""

    FULL = "full"
    MISCONF = "misconf"
    READONLY = "readonly"
    NOREPLICAS = "noreplicas"

    @property
    def cause(self) -> str:
        """What a person reads: the cause, and what ends it."""
        return _CAUSES[self]


_CAUSES = {
    WriteRefusal.FULL: (
        "the store is full (Redis's memory is at or near its maxmemory); it takes new work again once tasks have "
        "drained or an operator raises maxmemory"
    ),
    WriteRefusal.MISCONF: (
        "the store refuses writes because Redis could not save to disk (MISCONF); it takes them again once a save "
        "succeeds"
    ),
    WriteRefusal.READONLY: (
        "the store refuses writes because Relay is connected to a read-only replica (READONLY, e.g. after a failover)"
    ),
    WriteRefusal.NOREPLICAS: "the store refuses writes because too few Redis replicas are in sync (NOREPLICAS)",
}

# How each refusal reads in an error reply, as Redis sends it or inside a script's error (Redis 6.2 wraps a
# script's errors in "Error running script ... -OOM ...").
_MARKS = (
    ("used memory > 'maxmemory'", WriteRefusal.FULL),
    ("MISCONF", WriteRefusal.MISCONF),
    ("READONLY", WriteRefusal.READONLY),
    ("read only replica", WriteRefusal.READONLY),
    ("NOREPLICAS", WriteRefusal.NOREPLICAS),
    ("not enough good replicas", WriteRefusal.NOREPLICAS),
)


def refusal_of(exc: BaseException) -> WriteRefusal | None:
    """The refusal ``exc`` reports, or None when it is another failure (Redis away, a timeout, a bug)."""
    if isinstance(exc, ReadOnlyError):
        return WriteRefusal.READONLY
    if not isinstance(exc, RedisError):
        return None
    text = str(exc)
    for mark, refusal in _MARKS:
        if mark in text:
            return refusal
    return None
