"""The peers' routes in this host's main table: which to install (the pure `routes.decide`),
and installing them through `Links` without ever touching a route the agent did not add.

Each round reads the main table, so what counts as foreign (a LAN that came up, a DHCP route, a
VPN) and as ours is never a memory of an earlier round; netlink stays off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import urllib.parse

from meshpeer.common.endpoints import IPAddress

from .mesh import Mesh
from .routes import Claim, Decision, Refusal, decide
from .state import Membership
from .uapi import DeviceStatus
from .wireguard import BackendError, Links, RouteTable

logger = logging.getLogger("meshpeer.peer.routes")

NOT_ACCEPTED = "peers' routes are installed only with `meshpeer run --accept-routes`"


class HostRoutes:
    def __init__(self, links: Links, ifname: str, accept: bool) -> None:
        self.links = links
        self.ifname = ifname
        self.accept = accept
        self.decision = Decision((), ())
        self._table: RouteTable | None = None  # as read for the last decision
        self._logged: frozenset[Claim] = frozenset()  # refused, and said so

    async def decide(
        self,
        mesh: Mesh,
        device: DeviceStatus,
        membership: Membership,
        rendezvous: frozenset[IPAddress],
    ) -> dict[bytes, tuple[str, ...]]:
        """Decide which advertised routes to install; answer each peer's accepted routes, which
        are all of its routes that go into its AllowedIPs."""
        claims = route_claims(mesh)
        self._table = None
        if not self.accept:
            self.decision = Decision((), tuple(Refusal(c, NOT_ACCEPTED) for c in claims))
            return {}
        if not claims and not self.decision.accepted:
            return {}  # nothing to install, nothing of ours to remove: no table dump
        table = await asyncio.to_thread(self.links.route_table, self.ifname)
        protected = protected_addresses(mesh, device, table, rendezvous)
        network = ipaddress.ip_network(membership.network)
        self.decision = decide(claims, table.foreign, protected, network, self.decision.accepted)
        self._table = table
        return {key: self.decision.routes_of(key) for key in {c.peer_key for c in claims}}

    async def install(self) -> None:
        """Make the main table hold exactly the accepted routes of ours; log what was refused
        (once per route, when first refused)."""
        failed: list[Refusal] = []
        wanted = {str(claim.route) for claim in self.decision.accepted}
        if self._table is not None and wanted != self._table.owned:
            errors = await asyncio.to_thread(
                self.links.set_routes, self.ifname, wanted, self._table.owned
            )
            failed = [
                Refusal(claim, errors[str(claim.route)])
                for claim in self.decision.accepted
                if str(claim.route) in errors
            ]
        self._log([*self.decision.refused, *failed])

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
            table = await asyncio.to_thread(self.links.route_table, self.ifname)
            if table.owned:
                await asyncio.to_thread(self.links.set_routes, self.ifname, set(), table.owned)


def route_claims(mesh: Mesh) -> list[Claim]:
    """Every route every peer advertises, in a stable order (by name, then key)."""
    peers = sorted(mesh.peers.values(), key=lambda peer: (peer.name, peer.public_key))
    return [
        Claim(peer.public_key, peer.name, ipaddress.ip_network(route))
        for peer in peers
        for route in peer.routes
    ]


def protected_addresses(
    mesh: Mesh, device: DeviceStatus, table: RouteTable, rendezvous: frozenset[IPAddress]
) -> dict[IPAddress, str]:
    """Addresses no peer's route may cover, each with what it is (for the log line)."""
    protected: dict[IPAddress, str] = {}
    # In a fixed order, first name kept: a refusal names the same address every round.
    for address in table.default_gateways:
        protected.setdefault(address, "the default gateway")
    for address in table.addresses:
        protected.setdefault(address, "this host's address")
    for address in sorted(rendezvous, key=str):
        protected.setdefault(address, "the rendezvous")
    for peer in sorted(mesh.peers.values(), key=lambda peer: (peer.name, peer.public_key)):
        for candidate in mesh.candidates(peer):
            host = ipaddress.ip_address(candidate.endpoint[0])
            protected.setdefault(host, f"the endpoint of peer {peer.name}")
    for status in device.peers.values():  # the rendezvous's too, and wherever WireGuard roamed
        if status.endpoint is not None:
            protected.setdefault(ipaddress.ip_address(status.endpoint[0]), "a WireGuard endpoint")
    return protected


def rendezvous_addresses(membership: Membership) -> frozenset[IPAddress]:
    """Where the rendezvous's WireGuard, DNS and API are, resolved once (blocking: in a thread)."""
    hosts = [
        membership.rendezvous_endpoint.rpartition(":")[0],
        membership.dns.rpartition(":")[0],
        urllib.parse.urlsplit(membership.api_url).hostname or "",
    ]
    found: set[IPAddress] = set()
    for host in filter(None, (host.strip("[]") for host in hosts)):
        with contextlib.suppress(OSError):
            for *_, address in socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM):
                found.add(ipaddress.ip_address(address[0]))
    return frozenset(found)
