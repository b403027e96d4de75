"""Endpoint hints from unauthenticated discovery (DNS-SD, mDNS), checked and bounded.

DESIGN.md, "Trust model": who is in the mesh, with which mesh address and routes, comes only
from the authenticated API. Anyone on the path can forge a DNS answer and anyone on the LAN can
announce an mDNS service, so what they say is a hint: at most an endpoint to try for a peer the
API lists (mesh.py decides when). Nothing here does I/O; every value is parsed, every table is
bounded, and nothing raises: a bad hint is dropped, it never ends the task that brought it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from meshpeer.common.endpoints import Endpoint, checked_endpoint, unicast

Source = Literal["api", "dns-sd", "lan"]
HintSource = Literal["dns-sd", "lan"]

# DNS-SD publishes one endpoint per peer (the mapping the rendezvous observed). An agent
# announces each of its LAN addresses on mDNS: two cover a host on wire and Wi-Fi, and keep
# what a spoofer can queue short (each hint costs a punch turn, see mesh.py).
ENDPOINTS_PER_KEY: Mapping[HintSource, int] = {"dns-sd": 1, "lan": 2}
# Hints for keys the API does not list (yet) are kept, unused, because an mDNS sighting is not
# repeated and may come before the watch lists its peer; a LAN's worth of them (lan.py tracks
# at most as many mDNS service names).
MAX_UNLISTED_KEYS = 256


@dataclass(frozen=True, slots=True)
class Candidate:
    """An endpoint to try for a peer, and which source named it."""

    endpoint: Endpoint
    source: Source


@dataclass(slots=True)
class Hints:
    """The latest hints of each discovery source, by peer key."""

    own_lan: tuple[ipaddress.IPv4Interface, ...] = ()  # our LAN addresses, with their prefixes
    # Keyed by what unauthenticated sources say, so bounded: per source, the keys the API lists
    # (at most api_decode.MAX_PEERS) and MAX_UNLISTED_KEYS others; per key, ENDPOINTS_PER_KEY.
    _found: dict[HintSource, dict[bytes, tuple[Endpoint, ...]]] = field(
        default_factory=lambda: {"dns-sd": {}, "lan": {}}
    )

    def replace(
        self,
        source: HintSource,
        found: Mapping[bytes, Iterable[Endpoint]],
        listed: Container[bytes],
    ) -> None:
        """What `source` says now, replacing what it said before; the rest is dropped."""
        table: dict[bytes, tuple[Endpoint, ...]] = {}
        unlisted = 0
        for key, endpoints in found.items():
            if type(key) is not bytes or len(key) != 32:
                continue
            if key not in listed:
                if unlisted == MAX_UNLISTED_KEYS:
                    continue
                unlisted += 1
            kept = self._usable(source, endpoints)
            if kept:
                table[key] = kept
        self._found[source] = table

    def set_own_lan(self, interfaces: Iterable[ipaddress.IPv4Interface]) -> None:
        """Our LAN addresses now; sightings no longer on one of them are dropped (the host
        moved to another network: what the old LAN said points nowhere)."""
        self.own_lan = tuple(interfaces)
        lan = self._found["lan"]
        for key, endpoints in list(lan.items()):
            kept = self._usable("lan", endpoints)
            if kept:
                lan[key] = kept
            else:
                del lan[key]

    def on_our_lan(self, endpoint: Endpoint) -> bool:
        """Whether a LAN sighting at `endpoint` would count: on one of our subnets."""
        return bool(self._usable("lan", (endpoint,)))

    def endpoints(self, source: HintSource, key: bytes) -> tuple[Endpoint, ...]:
        return self._found[source].get(key, ())

    def _usable(self, source: HintSource, endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
        kept: list[Endpoint] = []
        for endpoint in endpoints:
            usable = self._usable_one(source, endpoint)
            if usable is not None and usable not in kept:
                kept.append(usable)
                if len(kept) == ENDPOINTS_PER_KEY[source]:
                    break
        return tuple(kept)

    def _usable_one(self, source: HintSource, endpoint: Endpoint) -> Endpoint | None:
        try:
            host, port = checked_endpoint(endpoint)
        except (TypeError, ValueError):  # InvalidInput, or not even a (str, int) pair
            return None
        address = ipaddress.ip_address(host)
        if not unicast(address):
            return None
        if source == "lan" and not self._on_our_lan(address):
            return None
        return host, port

    def _on_our_lan(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """On one of our connected IPv4 subnets, and not our own address or a broadcast: a
        LAN host cannot point us at the internet, at another network, or at ourselves."""
        return any(
            address in own.network
            and address not in (own.ip, own.network.network_address, own.network.broadcast_address)
            for own in self.own_lan
        )
