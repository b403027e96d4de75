"""What a running agent works with, once it has joined and made its interface: shared by the
loops that follow the rendezvous, reconcile the interface and watch the host's networks."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from meshpeer.common.endpoints import IPAddress

from .host_routes import HostRoutes
from .instances import Failover
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
    rendezvous_addresses: frozenset[IPAddress]
    rendezvous: RendezvousState
    identity: Identity
    presence: Presence  # mDNS, and following the host to other networks
    rendezvous_peer: PeerConfig  # as the interface has it: kicked when a path stalls
    failover: Failover  # which rendezvous instance we use, and the next (instances.py)
    last_status: dict[str, Any] | None = None
    relay_retry_at: float = 0.0  # after a refused or failed PUT /v1/relay, not before this

    def surroundings(self, route_table: RouteTable | None) -> Surroundings:
        network = ipaddress.ip_network(self.membership.network)
        addresses = self.rendezvous_addresses
        return Surroundings(self.identity, self.rendezvous, network, addresses, route_table)
