"""Every Redis key Relay writes, in one place, and how they are spread over partitions.

All keys share the ``relay:`` prefix so that Relay can live beside the Dramatiq broker (``dramatiq:``) in one
Redis.

Partitions. Relay's keyspace is cut into a fixed number of partitions, chosen when the store is made
(``RELAY_PARTITIONS``: one on a standalone Redis, :data:`CLUSTER_PARTITIONS` on a cluster). Every key of a
partition carries the partition's hash tag, so that on a Redis Cluster all of a partition sits in one slot and
every Lua step, which touches one partition, runs on one node. The tags are chosen by their slot: partition *i*
lives in the *i*-th of equal ranges of the 16,384 slots, so the partitions spread evenly over any number of
masters that split the slots evenly (hash tags ``{0}``, ``{1}``, … do not: their slots bunch up).

What goes where, and why:

- A task, its events, its deliveries, its webhook line, its attempt log and its dead letters live in one
  partition, named by the first two characters of the task's id (and of its events' and dead letters' ids), so
  that any of them is found from its id alone.
- A destination (one tenant's receiver: flow control, caps, breaker, pause and order) lives in the partition
  its id names; one destination's flow control is one place by design.
- A task with a webhook is placed in its destination's partition: the step that ends a task owes its webhook to
  the destination in the same atomic step, as on one Redis. A task without one is placed at random (or by its
  Idempotency-Key, so that a retry finds the first). A tenant with many destinations and many tasks therefore
  spreads over the whole cluster; only one destination's own traffic shares a slot, and that traffic is bounded
  by the destination's flow control anyway.
- What was global (owed tasks, the schedule, due deliveries, ready destinations, the list indexes, the
  counters) is per partition; the readers that span partitions merge them.
- A bounded few keys stay global and are read rarely: the layout, the store's epoch, the operator's signing
  secrets, and per-tenant keys that are each their own single-key step (rate limits, stream counts, signing
  secrets, Idempotency-Keys of keyed submissions whose task lives elsewhere).

On a standalone Redis with one partition the tag is empty and every key is the one Relay has always written, so
a store made before partitions existed is read as it is.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

PREFIX = "relay:"
# Partitions of a store made on a Redis Cluster (unless RELAY_PARTITIONS says otherwise): enough that any number
# of masters up to about a dozen each holds within a few percent of its share, few enough that a pass over all of
# them (the operator's lists, the sweeper's backstop) stays cheap.
CLUSTER_PARTITIONS = 64
MAX_PARTITIONS = 1024  # two base32 characters of an id name a partition
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_VALUE = {c: i for i, c in enumerate(_ALPHABET)}

# Global keys (see above).
LAYOUT = PREFIX + "layout"  # hash: partitions (written once, when the store is new)
OPS_SECRETS = PREFIX + "ops:secrets"  # the operator's signing secrets (operational events)
# Hash: the store's epoch, written once when the store is new (see delivery.epoch).
EPOCH = PREFIX + "epoch"
# Never holds anything: a DEL of it asks Redis whether it takes writes now (see service.api.store_watch). On a
# cluster each partition has its own (Partition.write_probe), so that every master holding a partition is asked.
WRITE_PROBE = PREFIX + "write-probe"


def _tag_for(index: int, count: int) -> str:
    """The first tag ``p<index>.<n>`` whose slot lies in the ``index``-th of ``count`` equal slot ranges."""
    low = index * REDIS_CLUSTER_HASH_SLOTS // count
    high = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // count
    n = 0
    while True:
        tag = f"p{index}.{n}"
        if low <= key_slot(tag.encode()) < high:
            return tag
        n += 1


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition of the keyspace: its keys all carry ``prefix`` (and so its hash tag)."""

    index: int
    tag: str | None  # None: the single partition of a standalone store, whose keys carry no tag

    @property
    def prefix(self) -> str:
        return PREFIX if self.tag is None else f"{PREFIX}{{{self.tag}}}:"

    # What was global to the store is per partition.
    @property
    def due(self) -> str:
        """Sorted set: event id -> unix time it is next looked at. It holds deliveries waiting for a socket's ack
        (until their ack timeout) and webhooks on their way to their destination (replays); a webhook owed to a
        destination waits in that destination's own keys (see :meth:`destination_keys`)."""
        return self.prefix + "due"

    @property
    def dead_letters(self) -> str:
        return self.prefix + "dl:all"  # sorted set: dead letter id -> dead_at (ms)

    @property
    def stats(self) -> str:
        return self.prefix + "stats"  # hash of counters

    @property
    def latency(self) -> str:
        return self.prefix + "latency"  # hash: histogram bucket -> count, plus sum and count

    @property
    def tasks(self) -> str:
        """Sorted set: task id -> created_at (ms), for lists; trimmed as records expire."""
        return self.prefix + "tasks:all"

    @property
    def scheduled_tasks(self) -> str:
        return self.prefix + "tasks:scheduled"  # sorted set: task id -> unix time it may start (run_at)

    @property
    def owed_tasks(self) -> str:
        """Every accepted task that has not ended, by the time it must show progress: a grace after it was enqueued
        while queued, the end of its run's lease while running. Overdue entries are enqueued again (see
        service.tasks.ledger); a task leaves the set in the step that ends it. The set, not the broker's queue, is
        the record of owed work."""
        return self.prefix + "tasks:owed"

    @property
    def requeues(self) -> str:
        return self.prefix + "tasks:requeues"  # hash: task id -> times the sweeper enqueued it again

    @property
    def destinations_ready(self) -> str:
        """Sorted set: destination id -> unix time it next has something to do."""
        return self.prefix + "dst:ready"

    @property
    def destinations(self) -> str:
        return self.prefix + "dst:all"  # set of destination ids

    @property
    def write_probe(self) -> str:
        """Never holds anything: a DEL of it asks this partition's node whether it takes writes now (on a store of
        one partition, :data:`WRITE_PROBE`)."""
        return self.prefix + "write-probe"

    @property
    def nothing(self) -> str:
        """A key of this partition that is never written: a script's place-holder for a key it does not use."""
        return self.prefix + "none"

    # A tenant's keys in this partition.
    def tasks_of(self, tenant: str) -> str:
        """Sorted set of a tenant's tasks by creation time (ms), for its lists."""
        return f"{self.prefix}tasks:tenant:{tenant}"

    def scheduled_of(self, tenant: str) -> str:
        """Sorted set of a tenant's tasks waiting for their run_at (task id -> that unix time), for its figures;
        entries whose time has passed are trimmed as new ones come (``scheduled_tasks`` is the one promoted)."""
        return f"{self.prefix}tasks:scheduled:tenant:{tenant}"

    def stats_of(self, tenant: str) -> str:
        """Hash of a tenant's own task counters (the same fields as ``stats`` counts for every tenant)."""
        return f"{self.prefix}stats:tenant:{tenant}"

    def open_tasks_of(self, tenant: str) -> str:
        """Sorted set of a tenant's tasks that have not ended, by creation time (ms)."""
        return f"{self.prefix}open:{tenant}"

    def dead_letters_of(self, tenant: str) -> str:
        return f"{self.prefix}dl:tenant:{tenant}"

    def destinations_of(self, tenant: str) -> str:
        return f"{self.prefix}dst:tenant:{tenant}"

    def idempotency(self, tenant: str, key_digest: str) -> str:
        return f"{self.prefix}idem:{tenant}:{key_digest}"

    def destination_keys(self, destination_id: str) -> list[str]:
        """A destination's meta, due, flight and deadline keys (the order the scripts take)."""
        # The single partition of a standalone store keeps the keys destinations always had, tagged by their id.
        base = f"{PREFIX}{{{destination_id}}}:" if self.tag is None else f"{self.prefix}dst:{destination_id}:"
        return [base + "meta", base + "due", base + "flight", base + "deadline"]

    # Prefixes of a task's (or an event's) keys, for scripts that build them from ids.
    @property
    def task_prefix(self) -> str:
        return self.prefix + "task:"

    @property
    def lease_prefix(self) -> str:
        return self.prefix + "lease:"

    @property
    def delivery_prefix(self) -> str:
        return self.prefix + "dlv:"

    @property
    def ack_prefix(self) -> str:
        return self.prefix + "ack:"


@dataclass(frozen=True)
class Layout:
    """The store's partitions; which one holds what (see the module's docstring)."""

    partitions: tuple[Partition, ...]
    # On a Redis Cluster: events go out on sharded pub/sub (SPUBLISH), to the node of their task's slot.
    cluster: bool = False
    _count: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_count", len(self.partitions))

    @classmethod
    def of(cls, count: int, *, cluster: bool = False) -> Layout:
        if not 1 <= count <= MAX_PARTITIONS:
            raise ValueError(f"a store has 1 to {MAX_PARTITIONS} partitions, not {count}")
        if count == 1:
            return cls((Partition(0, None),), cluster)
        return cls(tuple(Partition(i, _tag_for(i, count)) for i in range(count)), cluster)

    def __len__(self) -> int:
        return self._count

    @cached_property
    def single(self) -> bool:
        return self._count == 1

    def for_id(self, entity_id: str) -> Partition:
        """The partition of a task, event, dead letter or destination, named by its id's first two characters."""
        if self._count == 1:
            return self.partitions[0]
        _, _, body = entity_id.partition("_")
        try:
            index = (_VALUE[body[0]] << 5 | _VALUE[body[1]]) % self._count
        except (KeyError, IndexError):
            index = 0  # not an id Relay made: whatever it names is found nowhere
        return self.partitions[index]

    def for_hash(self, *parts: str) -> Partition:
        """The partition that ``parts`` hash to (a tenant and an Idempotency-Key, say)."""
        if self._count == 1:
            return self.partitions[0]
        return self.partitions[zlib.crc32("\x00".join(parts).encode()) % self._count]

    def any(self) -> Partition:
        """A partition at random: where a task with nothing to place it goes."""
        if self._count == 1:
            return self.partitions[0]
        return self.partitions[random.randrange(self._count)]

    def mark(self, entity_id: str, partition: Partition) -> str:
        """``entity_id`` (``<prefix>_<base32>``) rewritten so that its first two characters name ``partition``."""
        if self._count == 1:
            return entity_id
        head, _, body = entity_id.partition("_")
        return f"{head}_{_ALPHABET[partition.index >> 5]}{_ALPHABET[partition.index & 31]}{body[2:]}"


_layout = Layout.of(1)


def layout() -> Layout:
    """The layout this process uses (one partition until :func:`use` says otherwise, at start)."""
    return _layout


def use(new: Layout) -> Layout:
    """Use ``new`` from now on; returns the layout used before (tests put it back)."""
    global _layout
    old, _layout = _layout, new
    return old


def partitions() -> Sequence[Partition]:
    return _layout.partitions


def of(entity_id: str) -> Partition:
    """The partition of a task, event, dead letter or destination id."""
    return _layout.for_id(entity_id)


# Keys found from an id: each lives in the partition the id names.
def destination_keys(destination_id: str) -> list[str]:
    """A destination's meta, due, flight and deadline keys, in one partition (the order the scripts take)."""
    return _layout.for_id(destination_id).destination_keys(destination_id)


def task(task_id: str) -> str:
    return f"{_layout.for_id(task_id).prefix}task:{task_id}"


def lease(task_id: str) -> str:
    """The token of the run that holds a task (expires unless that run renews it)."""
    return f"{_layout.for_id(task_id).prefix}lease:{task_id}"


def events(task_id: str) -> str:
    return f"{_layout.for_id(task_id).prefix}events:{task_id}"


def attempts(task_id: str) -> str:
    return f"{_layout.for_id(task_id).prefix}attempts:{task_id}"


def delivery_steps(task_id: str) -> str:
    """List of the task's webhooks' dead-lettered and replayed steps, oldest first (kept as long as its attempts)."""
    return f"{_layout.for_id(task_id).prefix}steps:{task_id}"


def webhook_head(task_id: str) -> str:
    """The task's webhook owed now ('p:' or 'f:' and its event id); newer ones wait in its line (task_line.lua)."""
    return f"{_layout.for_id(task_id).prefix}wh:head:{task_id}"


def webhook_line(task_id: str) -> str:
    """List of the task's webhooks waiting behind its head, oldest first."""
    return f"{_layout.for_id(task_id).prefix}wh:line:{task_id}"


def subscribers(task_id: str) -> str:
    """Set of sockets (anywhere in the cluster) that follow a task; expires unless their node refreshes it."""
    return f"{_layout.for_id(task_id).prefix}subs:{task_id}"


def delivery(event_id: str) -> str:
    return f"{_layout.for_id(event_id).prefix}dlv:{event_id}"


def ack_marker(event_id: str) -> str:
    """Present while an event's delivery waits for a socket's ack."""
    return f"{_layout.for_id(event_id).prefix}ack:{event_id}"


def dead_letter(dl_id: str) -> str:
    return f"{_layout.for_id(dl_id).prefix}dl:{dl_id}"


def dead_letter_of_event(event_id: str) -> str:
    return f"{_layout.for_id(event_id).prefix}dl:event:{event_id}"


# Per-tenant keys that are their own single-key steps.
def secrets(tenant: str) -> str:
    return f"{PREFIX}secrets:{tenant}"


def rate(tenant: str) -> str:
    return f"{PREFIX}rate:{tenant}"


def tenant_streams(tenant: str) -> str:
    """Sorted set of a tenant's open WebSockets and streams on every API node: member -> unix time it expires
    unless its node refreshes it (a node that dies leaves members that expire)."""
    return f"{PREFIX}streams:{tenant}"


def stats_history(tenant: str | None) -> str:
    """List of recent snapshots of the counters (every tenant's, or one tenant's), newest first, for rates."""
    return f"{PREFIX}stats:history:" + ("all" if tenant is None else f"tenant:{tenant}")


# Every task's channel, in any partition (a standalone store's API nodes subscribe to them all).
LIVE_PATTERN = PREFIX + "*live:*"
LIVE_INFIX = ":live:"


def task_channel(task_id: str) -> str:
    """Pub/sub channel of a task's live events, in its partition's slot (a sharded channel on a cluster)."""
    return f"{_layout.for_id(task_id).prefix}live:{task_id}"
