"""Ids and callback URLs placed as Relay places them, for tests that build their records by hand.

On a store of one partition every id lives in it: these give back the names they are given ("task_1", "evt_1"). On a
store of several (TEST_SLOT_CHECK), an id names its partition in its first two characters after the ``_`` (see
delivery.keys), and a task with a webhook lives in its destination's partition (``service.tasks.store.place``), its
events and dead letters in its own: these put the two characters there, so that every step a test drives touches
one partition, as it does in production.
"""

from __future__ import annotations

import itertools

from delivery import keys
from delivery.destinations import destination_for
from service.tasks.store import place


def placed(name: str, partition: keys.Partition) -> str:
    """``name`` (``task_1``) as an id of ``partition``: as it is on one partition, else ``task_<two chars>1``."""
    layout = keys.layout()
    if layout.single:
        return name
    head, _, body = name.partition("_")
    return layout.mark(f"{head}_..{body}", partition)


def home(tenant: str, url: str) -> keys.Partition:
    """The partition of a task of ``tenant`` whose webhook goes to ``url``: its destination's."""
    return place(tenant, url, None)


def task_id(name: str, tenant: str = "acme", url: str | None = None, *, idempotency_key: str | None = None) -> str:
    """The id ``name`` placed as a new task of ``tenant`` with this webhook (or Idempotency-Key) is: a task with
    neither may live anywhere (``name`` as it is names one)."""
    if url is None and idempotency_key is None:
        return name
    return placed(name, place(tenant, url, idempotency_key))


def event_id(name: str, task: str) -> str:
    """The id ``name`` as one of task ``task``'s events (or dead letters): in the task's partition."""
    return placed(name, keys.of(task))


def url_in(partition: keys.Partition, tenant: str, template: str, *, skip: int = 0) -> str:
    """The first URL of ``template`` (formatted with 0, 1, ...) whose destination, for ``tenant``, lives in
    ``partition``, past ``skip`` such URLs: destinations that share a partition, as any two may."""
    found = 0
    for n in itertools.count():
        url = template.format(n)
        if keys.of(destination_for(tenant, url).id) == partition:
            if found == skip:
                return url
            found += 1
    raise AssertionError("unreachable")
