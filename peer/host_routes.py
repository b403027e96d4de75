"""The peers' routes in this host's main table: reading the table for the core's decision
(mesh.py, routes.py) and installing its plan through `Links`, never touching a route the agent
did not add.

Each round reads the main table afresh, so what counts as foreign (a LAN that came up, a DHCP
route, a VPN) and as ours is never a memory of an earlier round; netlink stays off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import urllib.parse

from meshpeer.common.endpoints import IPAddress, host_of

from .errors import BackendError
from .links import Links
from .routes import Claim, Refusal, RoutePlan, RouteTable
from .state import Membership

logger = logging.getLogger("meshpeer.peer.routes")


class HostRoutes:
    def __init__(self, links: Links, ifname: str, accept: bool) -> None:
        self.links = links
        self.ifname = ifname
        self.accept = accept
        self._logged: frozenset[Claim] = frozenset()  # refused, and said so

    async def read_table(self) -> RouteTable:
        """The main table and this host's addresses, as the core's route decision needs them."""
        return await asyncio.to_thread(self.links.route_table, self.ifname)

    async def install(self, plan: RoutePlan) -> None:
        """Make the main table hold exactly the accepted routes of ours; log what was refused
        (once per route, when first refused)."""
        failed: list[Refusal] = []
        if plan.changes and plan.owned is not None:
            errors = await asyncio.to_thread(
                self.links.set_routes, self.ifname, set(plan.wanted), plan.owned
            )
            failed = [
                Refusal(claim, errors[str(claim.route)])
                for claim in plan.accepted
                if str(claim.route) in errors
            ]
        self._log([*plan.refused, *failed])

    def _log(self, refusals: list[Refusal]) -> None:
        """Once per claim while it stays refused, even if the reason moves on (an endpoint
        learnt later may be the first address a route is found to contain)."""
        level = logging.WARNING if self.accept else logging.INFO
        for refusal in refusals:
            if refusal.claim not in self._logged:
                logger.log(level, "%s", refusal)
        self._logged = frozenset(refusal.claim for refusal in refusals)

    async def remove(self) -> None:
        """On the way out, exactly the routes we added. Removing the link takes them too, but
        not when that fails, and a route of ours must never outlive the agent."""
        if not self.accept:
            return
        with contextlib.suppress(BackendError, OSError):  # the link is gone already
            table = await self.read_table()
            if table.owned:
                await asyncio.to_thread(self.links.set_routes, self.ifname, set(), table.owned)


def rendezvous_addresses(membership: Membership) -> frozenset[IPAddress]:
    """Where the rendezvous's WireGuard, DNS and API are, resolved once (blocking: in a thread)."""
    hosts = [
        host_of(membership.rendezvous_endpoint),
        host_of(membership.dns),
        urllib.parse.urlsplit(membership.api_url).hostname or "",
    ]
    found: set[IPAddress] = set()
    for host in filter(None, hosts):
        with contextlib.suppress(OSError):
            for *_, address in socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM):
                found.add(ipaddress.ip_address(address[0]))
    return frozenset(found)
