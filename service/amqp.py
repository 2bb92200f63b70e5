"""A process's own connections to RabbitMQ: a few threads, each owning one, kept alive between calls.

Dramatiq's ``RabbitmqBroker`` opens one ``pika.BlockingConnection`` per thread that uses it, and pika services
a blocking connection (heartbeats, a close sent by the broker) only while that thread is inside a pika call.
Called through ``asyncio.to_thread``, the broker ends up with a connection in every thread of the default
executor, each idle for as long as that thread happens to do other work: RabbitMQ drops them for missed
heartbeats, and a connection the broker closed stays in its thread until a publish there finds out.

:class:`AmqpLink` gives each connection a thread of its own (a lane). Every call on a lane that fails because
the connection or channel is gone opens a new one and runs again, once, as Dramatiq's enqueue does; between
calls the link services each idle lane's connection often enough for its heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.errors import ConnectionClosed

from delivery import background

__all__ = ["AmqpLink", "service_interval_s"]

log = logging.getLogger("relay.amqp")

T = TypeVar("T")

# Lanes (threads, each with its own connection) a process publishes through: submissions in flight at once.
DEFAULT_LANES = 4
# Longest wait between two services of an idle connection; shorter when the heartbeat asked for is short.
DEFAULT_SERVICE_S = 5.0
# RabbitMQ's default heartbeat, in force when the URL asks for none.
DEFAULT_HEARTBEAT_S = 60.0
# How long closing waits for each lane's connection to close.
CLOSE_WAIT_S = 5.0

# What pika and Dramatiq raise when a connection or channel is gone (closed by the broker, dropped, refused).
LINK_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    ConnectionClosed,
)


def service_interval_s(parameters: Any) -> float:
    """How often an idle connection must be serviced so that none of its heartbeats is missed.

    Args:
        parameters: the broker's pika connection parameters (one set, or a list of them for several hosts).
    """
    heartbeats = [p.heartbeat for p in (parameters if isinstance(parameters, list) else [parameters])]
    asked = [float(h) for h in heartbeats if isinstance(h, int | float) and h > 0]
    # Pika sends a heartbeat every half interval at best: service at a quarter of the shortest one.
    return min(DEFAULT_SERVICE_S, min(asked, default=DEFAULT_HEARTBEAT_S) / 4)


class _Lane:
    def __init__(self, index: int) -> None:
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"relay-amqp-{index}")
        self.in_flight = 0


class AmqpLink:
    """Runs blocking calls on a ``RabbitmqBroker`` in threads of its own, one connection each, kept alive.

    Args:
        broker: the broker whose per-thread connection each lane uses.
        lanes: threads (and connections) at most; a call goes to the least busy one.
    """

    def __init__(self, broker: RabbitmqBroker, *, lanes: int = DEFAULT_LANES) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, not {lanes}")
        self._broker = broker
        self._lanes = [_Lane(i) for i in range(lanes)]
        self.interval_s = service_interval_s(broker.parameters)
        self._keeper: asyncio.Task[None] | None = None

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the least busy lane; when the connection is gone, run it once more on a new one."""
        lane = min(self._lanes, key=lambda lane: lane.in_flight)
        return await self._on(lane, lambda: self._reconnecting(fn))

    def start(self) -> None:
        """Start servicing idle connections (in the running event loop)."""
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep(), name="relay-amqp-keeper")

    async def close(self) -> None:
        """Stop servicing, close each lane's connection in its own thread, and let the threads go."""
        await background.stop(self._keeper)
        self._keeper = None
        closing = [self._on(lane, self._drop) for lane in self._lanes]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), CLOSE_WAIT_S)
        for lane in self._lanes:
            lane.thread.shutdown(wait=False, cancel_futures=True)

    async def _on(self, lane: _Lane, fn: Callable[[], T]) -> T:
        lane.in_flight += 1
        try:
            return await asyncio.wrap_future(lane.thread.submit(fn))
        finally:
            lane.in_flight -= 1

    def _reconnecting(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except LINK_ERRORS as exc:
            log.info("the connection to RabbitMQ is gone (%s); opening a new one", type(exc).__name__)
            self._drop()
        return fn()

    def _drop(self) -> None:
        """Forget (and close, if still open) this thread's connection: the next call opens a new one."""
        del self._broker.connection  # the broker's deleter logs, rather than raises, a close that fails

    def _service(self) -> None:
        """Let pika read and write on this thread's connection: heartbeats both ways, a close from the broker."""
        # The broker keeps each thread's connection in ``state``; a lane with none has nothing to keep alive.
        connection = getattr(self._broker.state, "connection", None)
        if connection is None:
            return
        try:
            connection.process_data_events(time_limit=0)
        except LINK_ERRORS as exc:
            log.info("RabbitMQ closed an idle connection (%s); the next call opens a new one", type(exc).__name__)
            self._drop()

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            # A busy lane is serviced by its calls; one stuck in a call is not queued more work.
            idle = [self._on(lane, self._service) for lane in self._lanes if lane.in_flight == 0]
            for outcome in await asyncio.gather(*idle, return_exceptions=True):
                if isinstance(outcome, Exception):
                    log.warning("servicing a connection to RabbitMQ failed: %r", outcome)
