"""How a peer's and a token's values are written in the registry's tables, for both engines:
routes, relay partners and LAN endpoints as JSON text, a peer read back from its columns."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from typing import Any

from meshpeer.common.endpoints import Endpoint, IPNetwork, format_endpoint, lan_endpoints
from meshpeer.common.keys import encode_key, parse_key

from .model import Peer, parse_cidr
from .storage import StoredPeer

PEER_COLUMNS = (
    "public_key, name, address, routes, endpoint_host, endpoint_port, "
    "endpoint_confirmed_at, last_handshake, handshake_timestamp, pending_routes, credential_hash, "
    "relay_partners, lan_endpoints"
)


def routes_text(routes: Iterable[Any]) -> str:
    return json.dumps([str(route) for route in routes])


def routes_from_text(text: str) -> tuple[IPNetwork, ...]:
    return tuple(parse_cidr(route, "stored route") for route in json.loads(text))


def partners_text(partners: Iterable[bytes]) -> str:
    return json.dumps([encode_key(key) for key in partners])


def endpoints_text(endpoints: Iterable[Endpoint]) -> str:
    return json.dumps([format_endpoint(endpoint) for endpoint in endpoints])


def stored_peer(row: Sequence[Any]) -> StoredPeer:
    """A peer from a row of PEER_COLUMNS, in that order."""
    key, name, address, routes, host, port, confirmed_at, handshake, timestamp, pending = row[:10]
    peer = Peer(
        public_key=bytes(key),
        name=str(name),
        address=ipaddress.ip_address(address),
        routes=routes_from_text(routes),
        pending_routes=routes_from_text(pending),
        endpoint=(str(host), int(port)) if host is not None and port is not None else None,
        endpoint_confirmed_at=confirmed_at,
        last_handshake=handshake,
        handshake_timestamp=bytes(timestamp),
        relay_partners=tuple(parse_key(key, "stored relay partner") for key in json.loads(row[11])),
        lan_endpoints=lan_endpoints(json.loads(row[12])),
    )
    return StoredPeer(peer, bytes(row[10]) if row[10] is not None else None)


def observation_row(peer: Peer) -> tuple[object, ...]:
    """The values of an observation's UPDATE: endpoint, times, replay floor, then the key."""
    host, port = peer.endpoint if peer.endpoint else (None, None)
    return (
        host,
        port,
        peer.endpoint_confirmed_at,
        peer.last_handshake,
        peer.handshake_timestamp,
        peer.public_key,
    )
