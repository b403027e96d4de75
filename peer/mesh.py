"""The agent's sans-I/O core: what the mesh should look like, what each path is, what to change.

Discovery feeds `Mesh` the other peers (from the watch API, later also DNS-SD and mDNS). The
device feeds it its status. `plan()` answers with the WireGuard peers to set or remove, and the
events worth a log line. Nothing here does I/O or reads a clock: `now` comes in.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .uapi import DeviceStatus, PeerConfig, UapiError, parse_endpoint

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
# other's current mapping, which is what opens the NATs.
REPUNCH_S = 10.0

Path = Literal["direct", "lan", "relay", "none"]


@dataclass(frozen=True, slots=True)
class RemotePeer:
    public_key: bytes
    name: str
    address: str
    routes: tuple[str, ...]
    endpoint: tuple[str, int] | None  # as the rendezvous observed it


@dataclass(slots=True)
class _PathState:
    path: Path = "none"
    punched_at: float | None = None
    punched_endpoint: tuple[str, int] | None = None
    candidates: tuple[tuple[str, int], ...] = ()
    attempt: int = 0  # which candidate: tried in turn, one per REPUNCH_S


@dataclass(frozen=True, slots=True)
class Plan:
    set_peers: list[PeerConfig]
    remove: list[bytes]
    events: list[str]


@dataclass(slots=True)
class Mesh:
    own_key: bytes
    peers: dict[bytes, RemotePeer] = field(default_factory=dict)
    lan: dict[bytes, list[tuple[str, int]]] = field(default_factory=dict)  # from mDNS
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

    def set_lan(self, sightings: dict[bytes, list[tuple[str, int]]]) -> None:
        self.lan = dict(sightings)

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

    def candidates(self, peer: RemotePeer) -> tuple[tuple[str, int], ...]:
        """Where to reach a peer, best first: its LAN addresses, then its public mapping."""
        found = list(self.lan.get(peer.public_key, []))
        if peer.endpoint is not None and peer.endpoint not in found:
            found.append(peer.endpoint)
        return tuple(found)

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
            events.append(f"peer {_short(key)} removed")
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
        if not candidates or (up and not self._moved(peer.public_key, device, state, candidates)):
            return config if reshaped else None  # an up path keeps the endpoint WireGuard has
        if candidates != state.candidates:
            state.candidates, state.attempt = candidates, 0  # news: try the best one now
        elif state.punched_at is not None and now - state.punched_at >= REPUNCH_S:
            state.attempt += 1  # that one did not answer: the next, in turn
        elif not reshaped:
            return None
        endpoint = candidates[state.attempt % len(candidates)]
        return self._punched(replace(config, endpoint=endpoint), state, now)

    def _punched(self, config: PeerConfig, state: _PathState, now: float) -> PeerConfig:
        """Point the peer at its endpoint and send at once (both sides do: the hole punch)."""
        if config.endpoint is None:
            return config
        state.punched_at, state.punched_endpoint = now, config.endpoint
        return replace(config, kick=True)

    def _moved(
        self,
        key: bytes,
        device: DeviceStatus,
        state: _PathState,
        candidates: tuple[tuple[str, int], ...],
    ) -> bool:
        """The endpoint in use was a candidate and is one no longer: the peer's mapping moved
        (its NAT rebooted, say). The session still looks fresh, but WireGuard would keep
        sending to a dead mapping until it times out, minutes later: punch the new one now.
        An endpoint WireGuard roamed to by itself (never a candidate) is kept."""
        status = device.peers.get(key)
        current = status.endpoint if status else None
        return current is not None and current in state.candidates and current not in candidates

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
            path = "lan" if seen in self.lan.get(peer.public_key, []) else "direct"
        if path != state.path:
            reason = "handshake completed" if path != "none" else "no live handshake"
            events.append(f"path to {peer.name} {state.path} -> {path} ({reason})")
            state.path = path

    def path(self, key: bytes) -> Path:
        state = self._paths.get(key)
        return state.path if state else "none"


def remote_from_json(item: dict[str, Any]) -> RemotePeer | None:
    """A peer as the API lists it; None for anything malformed (it is skipped, not fatal)."""
    try:
        key = base64.b64decode(str(item["public_key"]), validate=True)
        address = str(ipaddress.ip_address(str(item["address"])))
        routes = tuple(str(ipaddress.ip_network(str(r))) for r in item.get("routes") or [])
        text = item.get("endpoint")
        endpoint = None if text is None else parse_endpoint(str(text))
    except (KeyError, ValueError, TypeError, binascii.Error, UapiError):
        return None
    if len(key) != 32:
        return None
    return RemotePeer(key, str(item.get("name", "")), address, routes, endpoint)


def _short(key: bytes) -> str:
    return base64.b64encode(key).decode()[:8] + "..."
