"""Task kinds: named callables with a msgspec input type, registered by decorator.

Like Dramatiq's actors, kinds register into one module-level registry at import time; the built-in kinds
live in :mod:`service.kinds.builtin`, others in the modules named by ``RELAY_TASK_MODULES``::

    from service.kinds import kind, TaskContext

    class Resize(msgspec.Struct):
        url: str
        width: int

    @kind("resize", input_type=Resize, time_limit_s=120)
    async def resize(data: Resize, ctx: TaskContext) -> dict[str, str]:
        await ctx.progress(50, "downloaded")
        ...

A kind may be ``async def`` or a plain function (run in a thread; report progress with
``ctx.progress_sync``). An ``async def`` kind runs on a worker's kind loop, shared with other tasks: a blocking
call in it (``time.sleep``, a synchronous client) holds that loop, which the worker then logs and sets aside
(see :mod:`service.worker.kind_loops`), and a cancellation or time limit cannot interrupt it (the task ends
``TimeLimitExceeded`` without it). Blocking work belongs in ``await asyncio.to_thread(...)`` or a plain
function kind. Whatever it returns must be JSON-encodable; whatever it raises fails the task, unless
the kind declares retries and the exception is one it retries::

    @kind("fetch", max_retries=5, retry_on=(httpx.TransportError,))
    async def fetch(data: Any, ctx: TaskContext) -> Any:
        ...
        raise Retry("rate limited", delay_s=30)  # Retry is always retried while retries are left

A retried task emits ``task.retrying`` and waits, ``scheduled``, for its next attempt: the exception's
``delay_s`` when it is a :class:`Retry` that gives one, else the kind's ``retry_delays_s`` (the last one
repeats). The attempt after the last retry that fails ends the task ``failed``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from delivery.errors import ConfigError

# A kind that runs longer than this (unless it says otherwise) fails with TimeLimitExceeded.
DEFAULT_TIME_LIMIT_S = 300.0
# Seconds before each retry of a kind's work; the last repeats.
DEFAULT_RETRY_DELAYS_S = (1.0, 10.0, 60.0, 300.0)
# The most retries a kind may declare, and the longest one retry may wait (a Retry's delay_s is capped to it).
MAX_RETRIES = 100
MAX_RETRY_DELAY_S = 86400.0


class Retry(Exception):
    """Raised by a kind to have its work tried again (while the kind's ``max_retries`` last), after ``delay_s``
    seconds when given, else after the kind's next retry delay."""

    def __init__(self, message: str = "retry requested", *, delay_s: float | None = None) -> None:
        super().__init__(message)
        if delay_s is not None and not 0 <= delay_s <= MAX_RETRY_DELAY_S:
            raise ValueError(f"Retry delay_s must be between 0 and {MAX_RETRY_DELAY_S:g} seconds, not {delay_s!r}")
        self.delay_s = delay_s


class ResultTooLarge(Exception):
    """Raised by ``ctx.progress`` for a message larger than ``RELAY_MAX_RESULT_BYTES``: the attempt fails with it
    (error type ``ResultTooLarge``, not retried), as it does for a result or an error that large."""


class ProgressReporter(Protocol):
    def __call__(self, percent: float, message: str | None) -> Awaitable[None]: ...


class TaskContext:
    """What a running kind knows (its task, which attempt this is) and can do besides returning: report progress.

    ``loop`` is the loop that ``report`` runs on (the worker's own, not the kind's): a report is written there,
    whichever loop or thread the kind runs on.
    """

    def __init__(
        self, *, task_id: str, report: ProgressReporter, loop: asyncio.AbstractEventLoop, attempt: int = 1
    ) -> None:
        self.task_id = task_id
        self.attempt = attempt  # 1 on the first run, raised by each retry and by each rerun after a lost run
        self._report = report
        self._loop = loop

    async def progress(self, percent: float, message: str | None = None) -> None:
        write = self._report(max(0.0, min(100.0, float(percent))), message)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            await write
            return
        # Shielded: a kind cancelled meanwhile does not cut a write to Redis in half.
        await asyncio.shield(asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_awaited(write), self._loop)))

    def progress_sync(self, percent: float, message: str | None = None) -> None:
        """Report progress from a plain (threaded) kind."""
        write = self._report(max(0.0, min(100.0, float(percent))), message)
        asyncio.run_coroutine_threadsafe(_awaited(write), self._loop).result()


async def _awaited(write: Awaitable[None]) -> None:
    await write


@dataclass(frozen=True, slots=True)
class TaskKind:
    name: str
    func: Callable[..., Any]
    input_type: Any = Any
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    max_retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Retry,)
    retry_delays_s: tuple[float, ...] = DEFAULT_RETRY_DELAYS_S

    def retry_delay_s(self, attempt: int, exc: BaseException) -> float | None:
        """Seconds to wait before the next attempt after ``attempt`` (from 1) failed with ``exc``; None when the
        failure ends the task (not retryable, or no retries left)."""
        if attempt > self.max_retries or not isinstance(exc, self.retry_on):
            return None
        if isinstance(exc, Retry) and exc.delay_s is not None:
            return exc.delay_s
        return self.retry_delays_s[min(attempt, len(self.retry_delays_s)) - 1]

    def parse_input(self, raw: Any) -> Any:
        """The input as the kind's type; raises ``msgspec.ValidationError`` when it does not fit. No input (null)
        for a kind whose input is an object reads as ``{}``: its fields' defaults, or a message naming the first
        one it needs."""
        if raw is None and isinstance(self.input_type, type) and issubclass(self.input_type, msgspec.Struct):
            raw = {}
        return msgspec.convert(raw, self.input_type)

    async def run(self, data: Any, ctx: TaskContext) -> Any:
        if inspect.iscoroutinefunction(self.func):
            return await self.func(data, ctx)
        return await asyncio.to_thread(self.func, data, ctx)


@dataclass
class KindRegistry:
    kinds: dict[str, TaskKind] = field(default_factory=dict)

    def register(
        self,
        name: str,
        *,
        input_type: Any = Any,
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
        max_retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (),
        retry_delays_s: tuple[float, ...] = DEFAULT_RETRY_DELAYS_S,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a kind. ``retry_on`` adds exception types worth retrying to :class:`Retry`, which is always
        one; ``max_retries`` (0: none) bounds how many times its work is tried again."""
        if not 0 <= max_retries <= MAX_RETRIES:
            raise ConfigError(f"task kind {name!r}: max_retries must be between 0 and {MAX_RETRIES}")
        if not retry_delays_s or any(not 0 <= d <= MAX_RETRY_DELAY_S for d in retry_delays_s):
            raise ConfigError(
                f"task kind {name!r}: retry_delays_s must be 0..{MAX_RETRY_DELAY_S:g} s each, at least one"
            )
        if any(not (isinstance(t, type) and issubclass(t, BaseException)) for t in retry_on):
            raise ConfigError(f"task kind {name!r}: retry_on must hold exception types")

        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            if name in self.kinds and self.kinds[name].func is not func:
                raise ConfigError(f"task kind {name!r} is registered twice")
            self.kinds[name] = TaskKind(
                name,
                func,
                input_type,
                time_limit_s,
                max_retries=max_retries,
                retry_on=(Retry, *retry_on),
                retry_delays_s=tuple(float(d) for d in retry_delays_s),
            )
            return func

        return decorator

    def get(self, name: str) -> TaskKind | None:
        return self.kinds.get(name)

    def names(self) -> list[str]:
        return sorted(self.kinds)


registry = KindRegistry()
kind = registry.register


def load_kinds(modules: tuple[str, ...]) -> KindRegistry:
    """Import the built-in kinds and the modules of ``RELAY_TASK_MODULES``; return the registry.

    Modules are found as ``python -m`` would from the directory Relay starts in (as Dramatiq's CLI does), after
    everything installed, so that a ``kinds.py`` beside one's ``relay.toml`` just works.
    """
    from service.kinds import builtin  # noqa: F401  (its kinds register as it is imported)

    if modules and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"RELAY_TASK_MODULES: cannot import {module!r}: {exc}") from exc
    return registry
