"""Asking mDNS again for the peers that should be on our LAN and are not sighted, sans-I/O.

zeroconf's browser asks who offers `_wireguard._udp.local.` four times in its first 14 s, then
only to refresh what it found, and an agent announces itself only when its mDNS starts. Two
agents that missed each other in that window (multicast held back for a while, a Wi-Fi's client
isolation lifted later, a first punch that went through the relay while the LAN said nothing)
never sighted each other, and their pair stayed on the NAT's hairpin for good. So while the
rendezvous lists a peer that reported a LAN endpoint on one of our subnets, behind our public
address or relayed (where paths.lan_to_try would take its sighting), and mDNS has not sighted it
there, the agent asks again: MDNS_ASK_FIRST_S after such a peer appears, then at doubling
intervals (RFC 6762 §5.2) up to an hour, each peer on its own series. However the API's list
churns, no two questions come closer than MDNS_ASK_FIRST_S.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import paths
from .mesh import Mesh
from .timers import MDNS_ASK_FIRST_S, MDNS_ASK_MAX_S

# Peers whose series are kept: far more than a LAN holds, and a bound on what the API's list
# can make us keep.
MAX_ASKED = 4096


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
    """When to ask mDNS again for the peers `unsighted` names: each peer's own series (2 s
    after it is first wanted, then doubling to an hour), kept while it comes and goes from the
    list, so that a list that swaps or flips its peers never resets a series; and never two
    questions within MDNS_ASK_FIRST_S, whatever the list does."""

    # By peer key: when it is next due, and the interval after that. Bounded: MAX_ASKED.
    _series: dict[bytes, tuple[float, float]] = field(default_factory=dict)
    last_at: float = float("-inf")

    def due(self, wanted: frozenset[bytes], now: float) -> bool:
        """Whether to ask now, for `wanted` (this round's `unsighted`)."""
        due = []
        for key in wanted:
            series = self._series.get(key)
            if series is None:
                self._series[key] = (now + MDNS_ASK_FIRST_S, MDNS_ASK_FIRST_S)
            elif now >= series[0]:
                due.append(key)
        if not due or now - self.last_at < MDNS_ASK_FIRST_S:
            return False
        self.last_at = now
        for key in due:
            interval = self._series[key][1]
            self._series[key] = (now + interval, min(2 * interval, MDNS_ASK_MAX_S))
        if len(self._series) > MAX_ASKED:  # a list of ever new keys: the wanted ones stay
            self._series = {key: self._series[key] for key in list(wanted)[:MAX_ASKED]}
        return True
