"""What the discovery sources hand the mesh core, as typed, checked values (sans-I/O).

Each adapter decodes its own wire format once (the watch API: api_decode.py; DNS-SD: dnssd.py;
mDNS: lan.py) and hands `Mesh.merge` a `Discovery`: the API says who is in the mesh, with which
mesh address, routes and observed endpoint; the hint sources only name endpoints by peer key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meshpeer.common.endpoints import Endpoint

from .hints import HintSource, Source


@dataclass(frozen=True, slots=True)
class RemotePeer:
    """A peer as the API lists it: the only source of who is in the mesh."""

    public_key: bytes
    name: str
    address: str  # its mesh address
    routes: tuple[str, ...]  # granted by the operator; installed only with --accept-routes
    endpoint: Endpoint | None  # as the rendezvous observed it
    # The peers it asked to reach through the relay; naming us means: reach it through the relay.
    relay_partners: frozenset[bytes] = frozenset()
    # Where it says it is on its own LANs (PUT /v1/lan): an mDNS sighting elsewhere is anyone's.
    lan_endpoints: tuple[Endpoint, ...] = ()


@dataclass(frozen=True, slots=True)
class Discovery:
    """What one source says, for `Mesh.merge`.

    `complete`: all the source knows now, replacing what it said before; otherwise a delta
    (the watch API's: `peers` changed, `removed` left). Hint sources always say all they know."""

    source: Source
    peers: tuple[RemotePeer, ...] = ()  # the API only
    removed: tuple[bytes, ...] = ()  # the API only, in a delta
    endpoints: Mapping[bytes, Sequence[Endpoint]] = field(default_factory=dict)  # hints only
    complete: bool = True


def api_list(peers: Iterable[RemotePeer]) -> Discovery:
    """The API's full list: every peer in the mesh."""
    return Discovery("api", peers=tuple(peers))


def api_delta(changed: Iterable[RemotePeer], removed: Iterable[bytes] = ()) -> Discovery:
    """The API's news since the last answer: peers that changed or came, and those that left."""
    return Discovery("api", peers=tuple(changed), removed=tuple(removed), complete=False)


def sighted(source: HintSource, endpoints: Mapping[bytes, Sequence[Endpoint]]) -> Discovery:
    """All that a hint source (DNS-SD, mDNS) sees now: endpoints by peer key."""
    return Discovery(source, endpoints=endpoints)
