"""The rendezvous API's JSON, decoded once into the typed values the core takes (discovery.py).

The answer comes over TLS from the rendezvous the token pins, but it is still bytes from the
network: every list is bounded, every value parsed (keys by common.keys, endpoints, LAN endpoints
and addresses by common.endpoints, routes by the UAPI encoder's own check), and a malformed peer
is skipped, never fatal, as a malformed answer is one `ValueError` (client.py calls that a
captive portal).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from meshpeer.common.endpoints import Endpoint, ip_literal, lan_endpoints, parse_endpoint
from meshpeer.common.errors import InvalidInput
from meshpeer.common.keys import parse_key
from meshpeer.common.limits import MAX_RELAY_PARTNERS, MAX_ROUTES

from .discovery import Discovery, RemotePeer, api_delta, api_list
from .instances import Instance, parse_instances
from .uapi import UapiError, checked_cidr

# A /16 mesh (the usual network) holds 65,534 peers: an answer that lists more is not the API's.
MAX_PEERS = 65536
# The API names peers with DNS labels (63 characters); this only bounds what reaches a log line.
MAX_NAME_LENGTH = 253
# The server's epoch is a short random token; it goes back into the next request's query.
MAX_EPOCH_LENGTH = 64
# How many pending routes a join answer may name in the log line that asks for approval.
MAX_PENDING_ROUTES_LOGGED = 8


@dataclass(frozen=True, slots=True)
class WatchAnswer:
    """One answer of the watch API, decoded."""

    epoch: str
    revision: int
    full: bool  # the whole list (replaces), or what changed since `revision`
    peers: tuple[RemotePeer, ...]  # ourselves included, when listed
    removed: tuple[bytes, ...]
    # The live rendezvous instances, the answering one first: in a full answer, and in a delta
    # only when the list changed (None: no news of it).
    instances: tuple[Instance, ...] | None = None

    def discovery(self) -> Discovery:
        return api_list(self.peers) if self.full else api_delta(self.peers, self.removed)

    def endpoint_of(self, key: bytes) -> Endpoint | None:
        """A listed peer's observed endpoint: our own NAT mapping, asked with our key (a full
        answer lists us; a delta only when our mapping moved)."""
        return next((p.endpoint for p in self.peers if p.public_key == key), None)


def watch_answer(answer: dict[str, Any]) -> WatchAnswer:
    """A watch answer; ValueError (or KeyError, TypeError) when it is not the API's at all."""
    peers, removed = answer["peers"], answer["removed"]
    if not isinstance(peers, list) or not isinstance(removed, list):
        raise TypeError("peers and removed must be lists")
    if len(peers) > MAX_PEERS or len(removed) > MAX_PEERS:
        raise ValueError(f"an answer lists more than {MAX_PEERS} peers")
    return WatchAnswer(
        str(answer["epoch"])[:MAX_EPOCH_LENGTH],
        int(answer["revision"]),
        bool(answer["full"]),
        tuple(filter(None, map(remote_peer, peers))),
        tuple(filter(None, map(_key, removed))),
        parse_instances(answer["instances"]) if "instances" in answer else None,
    )


def remote_peer(item: object) -> RemotePeer | None:
    """A peer as the API lists it; None for anything malformed (it is skipped, not fatal).
    Addresses go through the UAPI encoder's own checks: no scope id, no control character."""
    if not isinstance(item, dict):
        return None
    try:
        key = parse_key(item["public_key"])
        address = ip_literal(str(item["address"]))
        routes = _routes(item.get("routes") or [])
        text = item.get("endpoint")
        endpoint = None if text is None else parse_endpoint(str(text))
        partners = _relay_partners(item.get("relay_partners") or [])
        lan = lan_endpoints(item.get("lan_endpoints") or [])  # at most MAX_LAN_ENDPOINTS
    except (KeyError, ValueError, TypeError, UapiError):  # InvalidInput is a ValueError
        return None
    name = str(item.get("name", ""))
    if not name.isprintable() or len(name) > MAX_NAME_LENGTH:
        return None
    return RemotePeer(key, name, address, routes, endpoint, partners, lan)


def _routes(routes: object) -> tuple[str, ...]:
    if not isinstance(routes, list) or len(routes) > MAX_ROUTES:
        raise ValueError(f"routes must be a list of at most {MAX_ROUTES}")  # as joins are
    return tuple(str(ipaddress.ip_network(checked_cidr(str(route)))) for route in routes)


def _relay_partners(keys: object) -> frozenset[bytes]:
    if not isinstance(keys, list) or len(keys) > MAX_RELAY_PARTNERS:
        raise ValueError(f"relay partners must be a list of at most {MAX_RELAY_PARTNERS}")
    return frozenset(parse_key(key) for key in keys)


def _key(text: object) -> bytes | None:
    try:
        return parse_key(text) if isinstance(text, str) else None
    except InvalidInput:
        return None


def pending_routes(join_answer: dict[str, Any]) -> tuple[str, ...]:
    """The routes a join asked for that wait for the operator, for one log line."""
    peer = join_answer.get("peer")
    pending = peer.get("pending_routes") if isinstance(peer, dict) else None
    if not isinstance(pending, list):
        return ()
    return tuple(str(route)[:64] for route in pending[:MAX_PENDING_ROUTES_LOGGED])
