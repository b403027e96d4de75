"""The agent's loops are restarted when they fail, and give up only when failing keeps on."""

from __future__ import annotations

import asyncio

import pytest

from meshpeer.peer.supervise import FAILURES_ALLOWED, LoopFailed, supervised


def test_a_failing_loop_is_restarted_and_its_work_goes_on() -> None:
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) <= 3:
            raise ValueError("a reply that was not what the API promised")

    asyncio.run(supervised("watch", flaky, first_delay_s=0.001))
    assert runs == [0, 1, 2, 3]


def test_a_loop_that_keeps_failing_ends_the_agent() -> None:
    async def broken() -> None:
        raise RuntimeError("always")

    with pytest.raises(LoopFailed, match=r"the reconcile loop failed \d+ times: RuntimeError"):
        asyncio.run(supervised("reconcile", broken, first_delay_s=0.001))


def test_failures_spread_over_time_are_forgiven() -> None:
    now = [0.0]
    runs: list[int] = []

    async def now_and_then() -> None:
        runs.append(1)
        now[0] += 30.0  # one failure every half a minute: never too many at once
        if len(runs) < 4 * FAILURES_ALLOWED:
            raise OSError("a hiccup")

    asyncio.run(supervised("dns-sd", now_and_then, clock=lambda: now[0], first_delay_s=0.0001))
    assert len(runs) == 4 * FAILURES_ALLOWED


def test_cancelling_a_supervised_loop_is_never_swallowed() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    async def scenario() -> None:
        task = asyncio.create_task(supervised("watch", forever))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
