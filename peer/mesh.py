"""The agent's sans-I/O core: what the mesh should look like, what each path is, what to change.

The watch API (authenticated) feeds `Mesh` the other peers; DNS-SD and mDNS feed it endpoint
hints (hints.py), which only ever add a candidate endpoint for a peer the API lists. The device
feeds it its status. `plan()` answers with the WireGuard peers to set or remove, and the events
worth a log line. Nothing here does I/O or reads a clock: `now` comes in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from meshpeer.common.endpoints import Endpoint, ip_literal, parse_endpoint
from meshpeer.common.keys import parse_key, short_key

from .hints import Candidate, Hints, HintSource
from .uapi import DeviceStatus, PeerConfig, UapiError, checked_cidr

# The rendezvous sees a NAT rebinding at the next keepalive. Ten seconds keeps "a moved peer is
# found again" near 10 s, and at one 32-byte packet per 10 s per peer it costs nothing. (The 25 s
# WireGuard suggests only keeps mappings open; it would make rebinding news 25 s late.)
RENDEZVOUS_KEEPALIVE_S = 10
# Between peers, the usual 25 s keeps every common NAT's UDP mapping alive (the shortest seen in
# the wild is 30 s).
PEER_KEEPALIVE_S = 25
# A session is dead 180 s after its handshake (REJECT_AFTER_TIME); with keepalives flowing a
# live path rehandshakes every 120 s, so a handshake younger than 180 s means the path is up.
PATH_FRESH_S = 180.0
# While a path is down, its endpoint is set again this often: both sides keep sending to each
# other's current mapping, which is what opens the NATs. It is also the length of a candidate's
# turn: at least WireGuard's REKEY_TIMEOUT (5 s), the interval at which it sends initiations,
# so every turn gets at least one packet to its endpoint.
REPUNCH_S = 10.0

# The API names peers with DNS labels (63 characters); this only bounds what reaches a log line.
MAX_NAME_LENGTH = 253

Path = Literal["direct", "lan", "relay", "none"]


@dataclass(frozen=True, slots=True)
class RemotePeer:
    public_key: bytes
    name: str
    address: str
    routes: tuple[str, ...]
    endpoint: Endpoint | None  # as the rendezvous observed it


@dataclass(slots=True)
class _PathState:
    path: Path = "none"
    turn_started: float | None = None  # when the endpoint below was punched
    endpoint: Endpoint | None = None
    public: Endpoint | None = None  # the API's endpoint when that turn started
    next_hint: int = 0  # the hints take their turns in order


@dataclass(frozen=True, slots=True)
class Plan:
    set_peers: list[PeerConfig]
    remove: list[bytes]
    events: list[str]


@dataclass(slots=True)
class Mesh:
    own_key: bytes
    peers: dict[bytes, RemotePeer] = field(default_factory=dict)  # from the API only
    hints: Hints = field(default_factory=Hints)
    # The advertised routes the agent accepted (peer/routes.py), per peer; none by default.
    _accepted_routes: dict[bytes, tuple[str, ...]] = field(default_factory=dict)
    _applied: dict[bytes, PeerConfig] = field(default_factory=dict)
    _paths: dict[bytes, _PathState] = field(default_factory=dict)

    # -- discovery ----------------------------------------------------------------------------

    def replace_all(self, peers: list[RemotePeer]) -> None:
        self.peers = {peer.public_key: peer for peer in peers if peer.public_key != self.own_key}

    def update(self, changed: list[RemotePeer], removed: list[bytes]) -> None:
        for peer in changed:
            if peer.public_key != self.own_key:
                self.peers[peer.public_key] = peer
        for key in removed:
            self.peers.pop(key, None)

    def record_hints(self, source: HintSource, found: Mapping[bytes, Iterable[Endpoint]]) -> None:
        """All that one discovery source says now: endpoints by peer key. Checked and bounded
        (hints.py); they count only for peers the API lists, and only as endpoints to try."""
        self.hints.replace(source, found, self.peers)

    def set_own_lan(self, interfaces: Iterable[ipaddress.IPv4Interface]) -> None:
        """Our LAN addresses: mDNS hints must lie on one of these subnets."""
        self.hints.own_lan = tuple(interfaces)

    def accept_routes(self, accepted: dict[bytes, tuple[str, ...]]) -> None:
        self._accepted_routes = dict(accepted)

    def allowed_ips(self, peer: RemotePeer) -> tuple[str, ...]:
        """The peer's mesh address and only the routes the agent accepted from it, never all it
        advertises: AllowedIPs is also WireGuard's source filter, so a route allowed there but
        not installed would still let the peer send packets from any address in it (a spoofed
        LAN or internet source, which this host would take in and, forwarding, pass on)."""
        host = ipaddress.ip_address(peer.address)
        accepted = self._accepted_routes.get(peer.public_key, ())
        return (f"{host}/{host.max_prefixlen}", *accepted)

    def forget_device(self) -> None:
        """The device was made anew: every peer must be written again."""
        self._applied.clear()
        self._paths.clear()

    def candidates(self, peer: RemotePeer) -> tuple[Candidate, ...]:
        """Where to reach a peer, best first, each endpoint once: its LAN addresses (mDNS), its
        mapping as the API observed it, then as DNS-SD published it."""
        key, found = peer.public_key, []
        found += [Candidate(endpoint, "lan") for endpoint in self.hints.endpoints("lan", key)]
        found += [Candidate(peer.endpoint, "api")] if peer.endpoint is not None else []
        found += [Candidate(endpoint, "dns-sd") for endpoint in self.hints.endpoints("dns-sd", key)]
        unique: dict[Endpoint, Candidate] = {}
        for candidate in found:
            unique.setdefault(candidate.endpoint, candidate)
        return tuple(unique.values())

    # -- planning -----------------------------------------------------------------------------

    def plan(self, device: DeviceStatus, now: float) -> Plan:
        events: list[str] = []
        wanted: list[PeerConfig] = []
        for key, peer in self.peers.items():
            state = self._paths.setdefault(key, _PathState())
            config = self._config(peer, device, state, now)
            if config is not None:
                wanted.append(config)
                self._applied[key] = config
                if key not in device.peers:
                    events.append(f"peer {peer.name} added ({peer.address})")
            self._note_path(peer, device, state, now, events)
        remove = [key for key in self._applied if key not in self.peers]
        for key in remove:
            del self._applied[key]
            self._paths.pop(key, None)
            events.append(f"peer {short_key(key)} removed")
        return Plan(wanted, remove, events)

    def _config(
        self, peer: RemotePeer, device: DeviceStatus, state: _PathState, now: float
    ) -> PeerConfig | None:
        """The peer's configuration, if something must be (re)written."""
        candidates = self.candidates(peer)
        # No endpoint yet: nothing to keep alive. The interval goes from 0 when one arrives,
        # and that makes WireGuard send at once: the punch starts without waiting for a timer.
        keepalive = PEER_KEEPALIVE_S if candidates else 0
        config = PeerConfig(peer.public_key, self.allowed_ips(peer), None, keepalive)
        applied = self._applied.get(peer.public_key)
        reshaped = (
            peer.public_key not in device.peers
            or applied is None
            or applied.allowed_ips != config.allowed_ips
        )
        up = self._is_up(peer.public_key, device, now)
        moved = self._moved(peer, device, state)
        if not candidates or (up and not moved):
            return config if reshaped else None  # an up path keeps the endpoint WireGuard has
        endpoint = self._turn(peer, candidates, state, now, public_first=moved)
        if endpoint is not None:
            return self._punched(replace(config, endpoint=endpoint), state, now)
        return replace(config, endpoint=state.endpoint) if reshaped else None

    def _turn(
        self,
        peer: RemotePeer,
        candidates: tuple[Candidate, ...],
        state: _PathState,
        now: float,
        *,
        public_first: bool,
    ) -> Endpoint | None:
        """The endpoint whose turn starts now, or None while the current turn runs.

        Each candidate is tried for a turn of REPUNCH_S. The API's endpoint takes every other
        turn, so it is tried at most one turn after any hint however many hints arrive (30
        spoofed mDNS sightings once held it back 300 s), and only news from the API, which is
        authenticated, cuts a turn short; the first turn goes to the LAN, as DESIGN.md asks."""
        public = peer.endpoint
        hints = [candidate.endpoint for candidate in candidates if candidate.source != "api"]
        if state.turn_started is None or public != state.public:  # the first turn, or news
            state.public, state.next_hint = public, 0
            lan_first = candidates[0].source == "lan" and not public_first
            return public if public is not None and not lan_first else self._hint(state, hints)
        if now - state.turn_started < REPUNCH_S:
            return None
        if public is not None and (state.endpoint != public or not hints):
            return public
        return self._hint(state, hints)

    def _hint(self, state: _PathState, hints: list[Endpoint]) -> Endpoint:
        endpoint = hints[state.next_hint % len(hints)]
        state.next_hint += 1
        return endpoint

    def _punched(self, config: PeerConfig, state: _PathState, now: float) -> PeerConfig:
        """Point the peer at its endpoint and send at once (both sides do: the hole punch)."""
        state.turn_started, state.endpoint = now, config.endpoint
        return replace(config, kick=True)

    def _moved(self, peer: RemotePeer, device: DeviceStatus, state: _PathState) -> bool:
        """The endpoint in use is the mapping the API gave, and the API has a new one: the
        peer's NAT rebooted, say. The session still looks fresh, but WireGuard would keep
        sending to a dead mapping until it times out, minutes later: punch the new one now.
        An endpoint WireGuard roamed to by itself, or a LAN one, is kept: only the API, never
        a hint, can move a live path."""
        status = device.peers.get(peer.public_key)
        current = status.endpoint if status else None
        news = peer.endpoint is not None and peer.endpoint != state.public
        return news and current is not None and current == state.public

    def _is_up(self, key: bytes, device: DeviceStatus, now: float) -> bool:
        status = device.peers.get(key)
        return bool(
            status and status.latest_handshake and now - status.latest_handshake < PATH_FRESH_S
        )

    def _note_path(
        self,
        peer: RemotePeer,
        device: DeviceStatus,
        state: _PathState,
        now: float,
        events: list[str],
    ) -> None:
        path: Path = "none"
        if self._is_up(peer.public_key, device, now):
            seen = device.peers[peer.public_key].endpoint
            path = "lan" if seen in self.hints.endpoints("lan", peer.public_key) else "direct"
        if path != state.path:
            reason = "handshake completed" if path != "none" else "no live handshake"
            events.append(f"path to {peer.name} {state.path} -> {path} ({reason})")
            state.path = path

    def path(self, key: bytes) -> Path:
        state = self._paths.get(key)
        return state.path if state else "none"


def remote_from_json(item: dict[str, Any]) -> RemotePeer | None:
    """A peer as the API lists it; None for anything malformed (it is skipped, not fatal).
    Addresses go through the UAPI encoder's own checks: no scope id, no control character."""
    try:
        key = parse_key(item["public_key"])
        address = ip_literal(str(item["address"]))
        routes = tuple(
            str(ipaddress.ip_network(checked_cidr(str(r)))) for r in item.get("routes") or []
        )
        text = item.get("endpoint")
        endpoint = None if text is None else parse_endpoint(str(text))
    except (KeyError, ValueError, TypeError, UapiError):  # InvalidInput is a ValueError
        return None
    name = str(item.get("name", ""))
    if not name.isprintable() or len(name) > MAX_NAME_LENGTH:
        return None
    return RemotePeer(key, name, address, routes, endpoint)
