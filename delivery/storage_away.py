"""Whether a failed Redis call means the node serving its key is away (down, unreachable, stalled, or its slot
without a master), as opposed to a refusal that names its cause (see :mod:`delivery.store_refusals`) or a bug.

On a Redis Cluster a tenant's own keys (its signing secrets, its count of open streams, its submit rate) each sit on
one master, while its tasks and destinations spread over all of them. The readers of those keys fall back to what
this process knows while that one master is away, so that the tenant's work on the others goes on.
"""

from __future__ import annotations

from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["is_away"]

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
