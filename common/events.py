"""Waiting for an asyncio event, at most so long."""

from __future__ import annotations

import asyncio


async def set_within(event: asyncio.Event, seconds: float) -> bool:
    """Whether `event` is set within `seconds`. asyncio.timeout, not wait_for: Python 3.11's
    wait_for returns the event's result when a cancel (a stop) comes in the same loop
    iteration, and the cancel is lost: a loop waiting so never stopped, and Registry.close
    waited for it forever (tests/test_registry_stop.py)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
