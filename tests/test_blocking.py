"""The no_blocking_calls fixture (conftest.py, tests/blocking.py) catches a blocking call on
an event loop's thread, lets the same call through from a worker thread, and the agent's own
lookups and netlink calls pass it."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pyroute2
import pytest

from meshpeer.peer.interface import rendezvous_peer
from meshpeer.peer.kernel_wg import KernelBackend
from meshpeer.peer.links import Links
from meshpeer.peer.state import Membership
from tests.blocking import BlockingCall

BLOCKING_CALLS: dict[str, Callable[[], Any]] = {
    "getaddrinfo": lambda: socket.getaddrinfo("localhost", 53),
    "gethostbyname": lambda: socket.gethostbyname("localhost"),
    "sleep": lambda: time.sleep(0),
    "IPRoute": lambda: pyroute2.IPRoute(),
    "WireGuard": lambda: pyroute2.WireGuard(),
    "IPRSocket": lambda: pyroute2.IPRSocket(),
}


@pytest.mark.parametrize("call", BLOCKING_CALLS.values(), ids=BLOCKING_CALLS.keys())
def test_a_blocking_call_in_a_coroutine_fails_the_test(call: Callable[[], Any]) -> None:
    async def coroutine() -> None:
        call()

    with pytest.raises(BlockingCall, match="event loop's thread"):
        asyncio.run(coroutine())


def test_the_same_call_from_a_worker_thread_or_outside_a_loop_is_allowed() -> None:
    async def coroutine() -> None:
        await asyncio.to_thread(time.sleep, 0)
        await asyncio.get_running_loop().getaddrinfo("127.0.0.1", 53)

    asyncio.run(coroutine())
    time.sleep(0)


@pytest.mark.allow_blocking
def test_a_test_marked_allow_blocking_opts_out() -> None:
    async def coroutine() -> None:
        time.sleep(0)  # noqa: ASYNC251 - what the marker allows

    asyncio.run(coroutine())


def test_the_rendezvous_is_resolved_off_the_loop() -> None:
    membership = Membership(
        "https://localhost:51821", "c", "me", "10.77.0.9", "10.77.0.0/16", "mesh.internal",
        "localhost:53", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "localhost:51820",
        "10.77.0.1",
    )  # fmt: skip
    peer = asyncio.run(rendezvous_peer(membership))
    assert peer.endpoint is not None and peer.endpoint[1] == 51820
    assert peer.allowed_ips == ("10.77.0.1/32",)


def test_the_kernel_backend_reads_netlink_off_the_loop() -> None:
    """Real netlink (a read-only link lookup), through the guarded pyroute2.IPRoute."""
    backend = KernelBackend(Links(), wireguard_factory=pyroute2.WireGuard)
    backend.ifname = "lo"
    assert asyncio.run(backend.alive())
