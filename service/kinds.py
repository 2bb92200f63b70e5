"""Task kinds: named callables with a msgspec input type, registered by decorator.

Like Dramatiq's actors, kinds register into one module-level registry at import time; the built-in kinds
live in :mod:`service.tasks.builtin`, others in the modules named by ``RELAY_TASK_MODULES``::

    from service.kinds import kind, TaskContext

    class Resize(msgspec.Struct):
        url: str
        width: int

    @kind("resize", input_type=Resize, time_limit_s=120)
    async def resize(data: Resize, ctx: TaskContext) -> dict[str, str]:
        await ctx.progress(50, "downloaded")
        ...

A kind may be ``async def`` or a plain function (run in a thread; report progress with
``ctx.progress_sync``). Whatever it returns must be JSON-encodable; whatever it raises fails the task.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from delivery.errors import ConfigError

# A kind that runs longer than this (unless it says otherwise) fails with TimeLimitExceeded.
DEFAULT_TIME_LIMIT_S = 300.0


class ProgressReporter(Protocol):
    def __call__(self, percent: float, message: str | None) -> Awaitable[None]: ...


class TaskContext:
    """What a running kind can do besides returning: report progress."""

    def __init__(self, *, task_id: str, report: ProgressReporter, loop: asyncio.AbstractEventLoop) -> None:
        self.task_id = task_id
        self._report = report
        self._loop = loop

    async def progress(self, percent: float, message: str | None = None) -> None:
        await self._report(max(0.0, min(100.0, float(percent))), message)

    def progress_sync(self, percent: float, message: str | None = None) -> None:
        """Report progress from a plain (threaded) kind."""
        asyncio.run_coroutine_threadsafe(self.progress(percent, message), self._loop).result()


@dataclass(frozen=True, slots=True)
class TaskKind:
    name: str
    func: Callable[..., Any]
    input_type: Any = Any
    time_limit_s: float = DEFAULT_TIME_LIMIT_S

    def parse_input(self, raw: Any) -> Any:
        """The input as the kind's type; raises ``msgspec.ValidationError`` when it does not fit."""
        return msgspec.convert(raw, self.input_type)

    async def run(self, data: Any, ctx: TaskContext) -> Any:
        if inspect.iscoroutinefunction(self.func):
            return await self.func(data, ctx)
        return await asyncio.to_thread(self.func, data, ctx)


@dataclass
class KindRegistry:
    kinds: dict[str, TaskKind] = field(default_factory=dict)

    def register(
        self, name: str, *, input_type: Any = Any, time_limit_s: float = DEFAULT_TIME_LIMIT_S
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
            if name in self.kinds and self.kinds[name].func is not func:
                raise ConfigError(f"task kind {name!r} is registered twice")
            self.kinds[name] = TaskKind(name, func, input_type, time_limit_s)
            return func

        return decorator

    def get(self, name: str) -> TaskKind | None:
        return self.kinds.get(name)

    def names(self) -> list[str]:
        return sorted(self.kinds)


registry = KindRegistry()
kind = registry.register


def load_kinds(modules: tuple[str, ...]) -> KindRegistry:
    """Import the built-in kinds and the modules of ``RELAY_TASK_MODULES``; return the registry."""
    importlib.import_module("service.tasks.builtin")
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"RELAY_TASK_MODULES: cannot import {module!r}: {exc}") from exc
    return registry
