"""Blocking calls on the event loop's thread fail tests (python-zeroconf's and Home Assistant's
block_async_io, in spirit): a resolver lookup, a sleep or a netlink socket there stalls every
loop of the agent (the watch, the reconcile, the punches) for as long as it takes.

`guard` wraps a callable so that it raises `BlockingCall` when called from a thread that runs
an event loop, and works as before from any other thread (asyncio.to_thread, loop.getaddrinfo's
executor) or outside a loop. conftest.py applies the guards to every unit test.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyroute2
import pytest

# Module attributes that block: name lookups, sleeps, and pyroute2's netlink sockets (their
# constructors open the socket; every call on them is a blocking send and receive).
BLOCKING: tuple[tuple[Any, str], ...] = (
    (socket, "getaddrinfo"),
    (socket, "gethostbyname"),
    (time, "sleep"),
    (pyroute2, "IPRoute"),
    (pyroute2, "WireGuard"),
    (pyroute2, "IPRSocket"),
)


class BlockingCall(AssertionError):
    """A blocking call on the event loop's thread: a test failure, whoever catches OSError."""


def on_loop_thread() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def forbid_on_loop_thread(what: str) -> None:
    """Raise BlockingCall if called on a thread that runs an event loop (for test fakes that
    stand in for a blocking library)."""
    if on_loop_thread():
        raise BlockingCall(
            f"{what} called on the event loop's thread: use asyncio.to_thread "
            "(or loop.getaddrinfo), or do it before the loop starts"
        )


def guard(what: str, blocking: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(blocking)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        forbid_on_loop_thread(what)
        return blocking(*args, **kwargs)

    return guarded


def guarded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for module, name in BLOCKING:
        monkeypatch.setattr(module, name, guard(f"{module.__name__}.{name}", getattr(module, name)))
    yield
