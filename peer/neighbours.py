"""Asking mDNS again for the peers that should be on our LAN and are not sighted, sans-I/O.

zeroconf's browser asks who offers `_wireguard._udp.local.` four times in its first 14 s, then
only to refresh what it found, and an agent announces itself only when its mDNS starts. Two
agents that missed each other in that window (multicast held back for a while, a Wi-Fi's client
isolation lifted later, a first punch that went through the relay while the LAN said nothing)
never sighted each other, and their pair stayed on the NAT's hairpin for good. So while the
rendezvous lists a peer that reported a LAN endpoint on one of our subnets, behind our public
address or relayed (where paths.lan_to_try would take its sighting), and mDNS has not sighted it
there, the agent asks again: MDNS_ASK_FIRST_S after such a peer appears, then at doubling
intervals (RFC 6762 §5.2) up to an hour, from the start when another one appears. However the
API's list churns, no two questions come closer than MDNS_ASK_FIRST_S.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import paths
from .mesh import Mesh
from .timers import MDNS_ASK_FIRST_S, MDNS_ASK_MAX_S


def unsighted(mesh: Mesh) -> frozenset[bytes]:
    """The peers mDNS should find on our LAN and has not."""
    wanted = []
    for key, peer in mesh.peers.items():
        # The cheap test first: a mesh of thousands has few peers behind our own address.
        if not (paths.behind_our_nat(peer, mesh.own_public) or mesh.path(key) == "relay"):
            continue
        if not any(mesh.hints.on_our_lan(endpoint) for endpoint in peer.lan_endpoints):
            continue
        if not paths.reported_sightings(peer, mesh.hints.endpoints("lan", key)):
            wanted.append(key)
    return frozenset(wanted)


@dataclass(slots=True)
class Asking:
    """When to ask mDNS again for the peers `unsighted` names."""

    wanted: frozenset[bytes] = frozenset()
    next_at: float | None = None
    interval: float = MDNS_ASK_FIRST_S

    def due(self, wanted: frozenset[bytes], now: float) -> bool:
        """Whether to ask now, for `wanted` (this round's `unsighted`)."""
        someone_new = not wanted <= self.wanted
        self.wanted = wanted
        if not wanted:
            self.next_at, self.interval = None, MDNS_ASK_FIRST_S
            return False
        if someone_new or self.next_at is None:
            self.interval = MDNS_ASK_FIRST_S
            soon = now + MDNS_ASK_FIRST_S  # the last question was at least this long ago
            self.next_at = soon if self.next_at is None else min(self.next_at, soon)
        if now < self.next_at:
            return False
        self.next_at = now + self.interval
        self.interval = min(2 * self.interval, MDNS_ASK_MAX_S)
        return True
