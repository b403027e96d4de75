"""Keeping the agent's loops alive: a loop that fails is logged with its reason and restarted
with backoff; one that keeps failing ends the agent with exit 1, so systemd restarts it.

Before, a non-JSON answer killed the watch loop and a ValueError or UapiError the reconcile
loop; the process went on handshaking with the rendezvous, looked healthy, and never added
another peer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

from meshpeer.common.errors import Failure

from .timers import FAILURE_WINDOW_S, RESTART_FIRST_S, RESTART_MAX_S

logger = logging.getLogger("meshpeer.peer.supervise")

FAILURES_ALLOWED = 5  # in FAILURE_WINDOW_S; one more and the agent gives up


class LoopFailed(Failure):
    """A loop failed more often than it can be restarted; the message says which and why."""


async def supervised(
    name: str,
    loop: Callable[[], Awaitable[None]],
    clock: Callable[[], float] = time.monotonic,
    first_delay_s: float = RESTART_FIRST_S,
) -> None:
    """Run `loop` until it returns; restart it when it raises, or raise LoopFailed."""
    failures: collections.deque[float] = collections.deque()
    delay = first_delay_s
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception as error:  # whatever it was, the agent must not go half alive
            now = clock()
            failures.append(now)
            while failures and now - failures[0] > FAILURE_WINDOW_S:
                failures.popleft()
            if len(failures) > FAILURES_ALLOWED:
                raise LoopFailed(
                    f"the {name} loop failed {len(failures)} times: {error!r}"
                ) from error
            logger.error(
                "the %s loop failed (%r); restarting it in %.1f s",
                name,
                error,
                delay,
                exc_info=error,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, first_delay_s * RESTART_MAX_S / RESTART_FIRST_S)
