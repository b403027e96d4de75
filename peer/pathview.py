"""What a round reads off the device for one peer's path (pure, beside paths.py): whether the
path is up, whether the peer's published mapping moved under it, and which path it is.
"""

from __future__ import annotations

from meshpeer.common.endpoints import Endpoint

from . import timers
from .discovery import RemotePeer
from .paths import Path, PathState
from .uapi import PeerStatus


def is_up(
    status: PeerStatus | None, state: PathState, last_heard: float | None, now: float
) -> bool:
    """A fresh session, and since this host moved (if it did), an answer on it: a path
    that answers nothing from the new network is down, however young its handshake (a
    symmetric NAT there never lets a port-restricted peer in: the pair must relay).
    `last_heard`: when the peer was last heard from (liveness.py)."""
    fresh = bool(
        status and status.latest_handshake and now - status.latest_handshake < timers.PATH_FRESH_S
    )
    if fresh and state.moved_at is not None:
        if (last_heard or 0.0) <= state.moved_at:
            return False
        state.moved_at = None  # answered from the new network
    return fresh


def mapping_moved(peer: RemotePeer, status: PeerStatus | None, state: PathState) -> bool:
    """The endpoint in use is the mapping the API gave, and the API has a new one: the
    peer's NAT rebooted, say. The session still looks fresh, but WireGuard would keep
    sending to a dead mapping until it times out, minutes later: punch the new one now.
    An endpoint WireGuard roamed to by itself, or a LAN one, is kept: only the API, never
    a hint, can move a live path."""
    current = status.endpoint if status else None
    news = peer.endpoint is not None and peer.endpoint != state.public
    return news and current is not None and current == state.public


def through_relay(status: PeerStatus | None, relay: Endpoint | None) -> bool:
    return status is not None and status.endpoint == relay is not None


def seen_path(
    peer: RemotePeer,
    status: PeerStatus | None,
    state: PathState,
    sightings: tuple[Endpoint, ...],
    relay: Endpoint | None,
    *,
    up: bool,
    now: float,
) -> Path:
    """The path as the device shows it now (`sightings`: the peer's on our LAN, mDNS's)."""
    if not up or status is None:
        return "none"
    if state.direct_try is not None or state.turn_started == now:
        return state.path  # a try, or an endpoint set just now: the device is a round behind
    seen = status.endpoint
    if seen is not None and seen == relay:
        return "relay"
    return "lan" if on_lan(peer, state, seen, sightings) else "direct"


def on_lan(
    peer: RemotePeer, state: PathState, seen: Endpoint | None, sightings: tuple[Endpoint, ...]
) -> bool:
    """Whether WireGuard sends to the peer on a LAN: at a sighting, at an endpoint the peer
    reported, or at the LAN endpoint a try left it on. Not the sighting alone: an mDNS
    goodbye (or a record that expired) turned a LAN path `direct`, and a `direct` path is
    never taken off a LAN that stopped answering (paths.off_a_silent_lan). A host with a
    public address on its link (a cloud VM) reports it as its LAN endpoint: that one is
    its public mapping, and `direct`."""
    if seen is None:
        return False
    if seen in sightings:
        return True
    return seen != peer.endpoint and (seen in peer.lan_endpoints or seen == state.lan_tried)
