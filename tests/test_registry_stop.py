"""A serving registry stops when asked, whatever its loops were just woken for.

Python 3.11's asyncio.wait_for returns the inner result when the outer task is cancelled in the
same loop iteration as the inner completes: a loop waiting on an event that way swallowed the
stop, and `Registry.close` waited on it forever (test_service hung about 1 run in 3 in CI)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshpeer.rendezvous.registry import Registry


def test_close_stops_loops_whose_events_were_just_set(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = await Registry.open(tmp_path)
        registry.start_background()
        await asyncio.sleep(0.2)  # every loop is waiting on its event now
        registry._following._nudged.set()  # a foreign commit, as the 50 ms poll says
        registry._observed._endpoint_moved.set()  # an endpoint moved
        await asyncio.wait_for(registry.close(), 5)

    asyncio.run(scenario())
