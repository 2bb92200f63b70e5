"""Whether a failed Redis call means the node serving its key is away (down, unreachable, stalled, or its slot
without a master), as opposed to a refusal that names its cause (see :mod:`delivery.store_refusals`) or a bug.

On a Redis Cluster a tenant's own keys (its signing secrets, its count of open streams, its submit rate) each sit on
one master, while its tasks and destinations spread over all of them. The readers of those keys fall back to what
this process knows while that one master is away, so that the tenant's work on the others goes on.
"""

from __future__ import annotations

import logging

from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Outages", "is_away"]

# ClusterDownError: CLUSTERDOWN, a master marked failed, or (as delivery.redis_client raises it) a slot with no
# known master; MasterDownError is one of them. ConnectionError covers refused and reset connections and a pool
# that cannot open one; TimeoutError a node that stalls past the command timeout.
_AWAY = (RedisConnectionError, RedisTimeoutError, ClusterDownError, SlotNotCoveredError, ConnectionError, TimeoutError)


def is_away(exc: BaseException) -> bool:
    """True when ``exc`` says the storage node of the command could not be reached or has no master now."""
    if isinstance(exc, _AWAY):
        return True
    # redis-py's cluster client says "… cannot be connected" when no node answers its slot map read.
    return isinstance(exc, RedisClusterException) and "cannot be connected" in str(exc)


class Outages:
    """The keys this process falls back from while their node is away, each said once an outage: a WARNING when a
    read or write of it first fails as away, an INFO when it answers again.

    Args:
        log: the logger the lines go to.
        what: what the key holds, before "of" and the owner (``"the submit rate"``).
        fallback: what the process does meanwhile, after "cannot be …;" (``"cannot be counted in Redis ({cause});
            limiting it in this process until it can"``), with ``{cause}`` for the error.
        again: what the INFO line says after "what of whose" once it answers (``"is counted across the cluster
            again"``).
    """

    def __init__(self, log: logging.Logger, what: str, *, fallback: str, again: str) -> None:
        self._log = log
        self._what = what
        self._fallback = fallback
        self._again = again
        self._away: set[str] = set()

    def away(self, whose: str, exc: BaseException) -> None:
        """``whose`` key failed as away: said unless it is away already."""
        if whose not in self._away:
            self._away.add(whose)
            cause = f"{type(exc).__name__}: {exc}"
            self._log.warning("%s of %s %s", self._what, whose, self._fallback.format(cause=cause))

    def back(self, whose: str) -> None:
        """``whose`` key answered: said if it was away."""
        if whose in self._away:
            self._away.discard(whose)
            self._log.info("%s of %s %s", self._what, whose, self._again)

    def forget(self, whose: str) -> None:
        """Stop following ``whose`` without a word (this process no longer keeps anything of it)."""
        self._away.discard(whose)
