"""What a running agent works with, once it has joined and made its interface: shared by the
loops that follow the rendezvous, reconcile the interface and watch the host's networks."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from meshpeer.common.endpoints import IPAddress

from .host_routes import HostRoutes
from .instances import Failover, literal_addresses
from .mesh import Mesh
from .plan import Surroundings
from .roaming import Presence
from .routes import RouteTable
from .state import Membership
from .status import Identity, RendezvousState
from .uapi import PeerConfig
from .wireguard import Backend


@dataclass(slots=True)
class Live:
    """What a running agent works with, once it has joined and made its interface."""

    membership: Membership
    mesh: Mesh
    backend: Backend
    routes: HostRoutes
    # Kept out of accepted routes (routes.py): the instance in use's addresses, resolved, and
    # every listed instance's IP literals (instances.py); replaced, never only added to.
    rendezvous_addresses: frozenset[IPAddress]
    rendezvous: RendezvousState
    identity: Identity
    presence: Presence  # mDNS, and following the host to other networks
    rendezvous_peer: PeerConfig  # as the interface has it: kicked when a path stalls
    failover: Failover  # which rendezvous instance we use, and the next (instances.py)
    last_status: dict[str, Any] | None = None
    relay_retry_at: float = 0.0  # after a refused or failed PUT /v1/relay, not before this
    in_use_addresses: frozenset[IPAddress] = frozenset()  # the instance in use's, resolved
    list_saved_at: float = float("-inf")  # when the instance list was last written to disk

    def protect(self, in_use: frozenset[IPAddress] | None = None) -> None:
        """The rendezvous addresses again: the instance in use's (`in_use`, when it changed)
        and the IP literals of the instances listed. A listed name is not resolved until the
        agent moves to it: the list must not make the agent ask resolvers about any name."""
        if in_use is not None:
            self.in_use_addresses = in_use
        listed = literal_addresses(self.failover.known)
        self.rendezvous_addresses = self.in_use_addresses | listed

    def surroundings(self, route_table: RouteTable | None) -> Surroundings:
        network = ipaddress.ip_network(self.membership.network)
        addresses = self.rendezvous_addresses
        return Surroundings(self.identity, self.rendezvous, network, addresses, route_table)
