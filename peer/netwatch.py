"""Following this host around networks: rtnetlink's news of links, addresses and routes.

A laptop carried to another network gets a new address and gateway while `meshpeer run` runs.
WireGuard goes on sending from the old source address until its endpoints are set again, so
the agent must notice (issue 17). The kernel announces every change on rtnetlink's multicast
groups (rtnetlink(7): RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE); this adapter reads
them through pyroute2 and says only "something changed". The agent then reads the view
(`Links.uplinks`) and roams only when the view itself moved, so its own route changes, a DHCP
renewal, or a link that flaps back as it was cost one read and nothing more. Only this host's
root can make these messages, but a burst of them still costs one read: changes are taken
together until the network is quiet for NETWORK_SETTLE_S.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Coroutine
from typing import Any

from .timers import NETWORK_SETTLE_MAX_S, NETWORK_SETTLE_S

logger = logging.getLogger("meshpeer.peer.netwatch")

# rtnetlink.h's multicast groups (RTMGRP_*): links, IPv4 addresses, IPv4 routes. The agent's
# endpoints are IPv4, as its LAN view is.
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE


async def network_changes() -> AsyncGenerator[None, None]:
    """Once as soon as subscribed (a view read from then on misses no change), then once per
    burst of rtnetlink messages, after it has settled; for ever."""
    from pyroute2 import AsyncIPRoute

    news = asyncio.Event()

    async def listen(netlink: AsyncIPRoute) -> None:
        while True:
            async for _message in netlink.get():  # the messages of one datagram
                news.set()

    async with AsyncIPRoute() as netlink:
        await netlink.bind(groups=GROUPS)
        listening = asyncio.create_task(listen(netlink), name="netlink")
        try:
            yield
            while True:
                await _first_of(news.wait(), listening)
                await _quiet(news)
                yield
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)


async def _first_of(waiting: Coroutine[Any, Any, Any], listening: asyncio.Task[None]) -> None:
    """Wait for news, or raise what ended the listener (the supervisor restarts the loop)."""
    waiter = asyncio.ensure_future(waiting)
    try:
        await asyncio.wait({waiter, listening}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if listening.done():
        listening.result()  # raises what ended it
        raise ConnectionError("rtnetlink stopped")


async def _quiet(news: asyncio.Event) -> None:
    """Until no news came for NETWORK_SETTLE_S: unplugging and plugging in a link is a dozen
    messages over tens of milliseconds, and the view is read once, at the end. A network that
    never settles (a flapping link) is read every NETWORK_SETTLE_MAX_S all the same."""
    for _ in range(int(NETWORK_SETTLE_MAX_S / NETWORK_SETTLE_S)):
        if not news.is_set():
            return
        news.clear()
        await asyncio.sleep(NETWORK_SETTLE_S)
    news.clear()
