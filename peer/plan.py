"""A round's inputs beyond the device (`Surroundings`) and everything it must change (`Plan`):
the mesh core (mesh.py) computes the plan, the agent gathers the inputs and applies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshpeer.common.endpoints import IPAddress, IPNetwork

from . import timers
from .routes import RoutePlan, RouteTable
from .status import Identity, RendezvousState
from .uapi import PeerConfig


@dataclass(frozen=True, slots=True)
class Surroundings:
    """What the agent read this round besides the device status."""

    identity: Identity
    rendezvous: RendezvousState
    network: IPNetwork  # the mesh's: no peer's route may overlap it
    rendezvous_addresses: frozenset[IPAddress] = frozenset()
    # The main table, read only when the core asks (`Mesh.wants_route_table`): None otherwise.
    route_table: RouteTable | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    set_peers: list[PeerConfig]  # WireGuard peers to (re)write
    remove: list[bytes]  # WireGuard peers to remove
    events: list[str]  # worth a log line each
    routes: RoutePlan = field(default_factory=RoutePlan)  # after the peers: AllowedIPs first
    status: dict[str, Any] | None = None  # the status.json document, with Surroundings
    # The peers we want to reach through the relay, when the rendezvous must be told (PUT
    # /v1/relay); None when it already holds them.
    relay_partners: frozenset[bytes] | None = None
    # Send the rendezvous a keepalive now: a path stalled, so our mapping may have moved.
    kick_rendezvous: bool = False
    # How soon the core wants the next round (it sees a handshake only when it looks).
    next_round_s: float = timers.RECONCILE_S
