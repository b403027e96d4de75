"""Waiting on the agent's tasks without ever waiting long: a stop must finish within 2 s, so
every cancel and every goodbye here is bounded by STOP_WAIT_S."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from .timers import STOP_WAIT_S

T = TypeVar("T")


async def end(tasks: list[asyncio.Task[Any]] | list[asyncio.Future[Any]]) -> None:
    """Cancel and wait for tasks, but never for long: a task that swallows its cancellation
    (dnspython's queries on Python 3.11 did) must not keep the agent from stopping."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=STOP_WAIT_S)


async def bounded(work: Coroutine[Any, Any, None]) -> None:
    """A goodbye (mDNS, a socket's close) that may not come: at most STOP_WAIT_S."""
    with contextlib.suppress(TimeoutError, OSError):
        await asyncio.wait_for(work, STOP_WAIT_S)


async def unless(event: asyncio.Event, work: Coroutine[Any, Any, T]) -> T | None:
    """`work`'s result, or None if `event` is set first (work is cancelled)."""
    task = asyncio.ensure_future(work)
    return task.result() if await done_before(task, event) else None


async def done_before(task: asyncio.Future[T], event: asyncio.Event) -> bool:
    """Whether `task` ended before `event` was set; if not, it is cancelled (bounded wait)."""
    interrupt = asyncio.ensure_future(event.wait())
    either: set[asyncio.Future[Any]] = {task, interrupt}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        interrupt.cancel()
    if task.done():
        return True
    await end([task])
    return False
