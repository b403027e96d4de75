"""The registry's vocabulary and the checks on everything a user or a peer hands us.

Pure functions and frozen records: the HTTP API and the CLI both validate through here, so a
mistake gets the same one-line explanation wherever it is made.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from meshpeer.common.endpoints import Endpoint, IPAddress, IPNetwork, format_endpoint
from meshpeer.common.errors import InvalidInput, UsageError
from meshpeer.common.keys import encode_key
from meshpeer.common.limits import MAX_ROUTES

from .timers import MAX_DURATION_S

# ASCII digits only (`\d` also takes '²' and other Unicode digits), and few of them.
_DURATION_PART = re.compile(r"([0-9]{1,9})([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_FORBIDDEN_SPACES = tuple(
    (ipaddress.ip_network(cidr), what)
    for cidr, what in (
        ("127.0.0.0/8", "loopback"),
        ("::1/128", "loopback"),
        ("169.254.0.0/16", "link-local space"),
        ("fe80::/10", "link-local space"),
        ("224.0.0.0/4", "multicast space"),
        ("ff00::/8", "multicast space"),
        ("0.0.0.0/8", "'this network' (RFC 1122)"),
        ("255.255.255.255/32", "the broadcast address"),
        # IPv4 space written as IPv6: a route there takes IPv4 traffic by another name.
        ("::ffff:0:0/96", "IPv4-mapped IPv6 space"),
        ("::/96", "IPv4-compatible IPv6 space"),
        ("64:ff9b::/96", "NAT64 space (all of IPv4)"),
        ("2002::/16", "6to4 space (all of IPv4)"),
    )
)
_MESH_SPACES = tuple(
    ipaddress.ip_network(cidr)
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
# How much address space one peer may carry: a /8's worth of IPv4, a /32's worth of IPv6. More
# is no site's LAN but a share of the internet, however it is cut into pieces.
MAX_CARRIED = {4: 2**24, 6: 2**96}


class Conflict(UsageError):
    """The request is valid but clashes with the registry (a name or key already taken)."""


class NotFound(UsageError, LookupError):
    """No such peer or token."""


class Rationed(Exception):
    """Too soon for another of these from this caller; `retry_after_s` says when (HTTP 429)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TokenRejected(UsageError):
    """A join token that is unknown, revoked, expired or used up; the message says which."""


@dataclass(frozen=True, slots=True)
class Peer:
    public_key: bytes
    name: str
    address: IPAddress
    routes: tuple[IPNetwork, ...] = ()
    endpoint: Endpoint | None = None
    endpoint_confirmed_at: float | None = None  # when this endpoint was first confirmed
    last_handshake: float | None = None
    handshake_timestamp: bytes = b""  # the newest TAI64N accepted: the replay floor
    pending_routes: tuple[IPNetwork, ...] = ()  # asked for, not (yet) granted by the operator
    # The peers it asked to reach through the relay; a pair relays both ways, so every peer
    # listed here (and the peer itself) points the other at the rendezvous.
    relay_partners: tuple[bytes, ...] = ()
    # Where it says it is on its own LANs (PUT /v1/lan, checked by common.endpoints): what lets
    # another peer behind the same public address trust an mDNS sighting of it enough to try.
    lan_endpoints: tuple[Endpoint, ...] = ()

    def observed_as(self, known: Peer | None) -> Peer:
        """This peer as another process stored it, with what only the serving process
        observes kept from `known` (its handshakes, written behind, and its endpoint unless
        the stored one was confirmed later): every other field, one added later included,
        comes from the store."""
        if known is None:
            return self
        # Several instances observe endpoints: the one confirmed latest wins (issue 18).
        latest = self if _confirmed(self) > _confirmed(known) else known
        return replace(
            self,
            endpoint=latest.endpoint,
            endpoint_confirmed_at=latest.endpoint_confirmed_at,
            last_handshake=known.last_handshake,
            handshake_timestamp=known.handshake_timestamp,
        )

    @property
    def public_key_b64(self) -> str:
        return encode_key(self.public_key)

    def to_json(self, *, operator: bool = False) -> dict[str, object]:
        """The contract of `rendezvous peers --json` and the API (DESIGN.md), plus extras.
        Routes waiting for a grant are the operator's business and the peer's own."""
        if operator:
            return {**self.to_json(), "pending_routes": [str(r) for r in self.pending_routes]}
        return {
            "name": self.name,
            "public_key": self.public_key_b64,
            "address": str(self.address),
            "endpoint": format_endpoint(self.endpoint) if self.endpoint else None,
            "last_handshake": _whole_seconds(self.last_handshake),
            "endpoint_confirmed_at": _milliseconds(self.endpoint_confirmed_at),
            "routes": [str(route) for route in self.routes],
            "relay_partners": [encode_key(key) for key in self.relay_partners],
            "lan_endpoints": [format_endpoint(endpoint) for endpoint in self.lan_endpoints],
        }


@dataclass(frozen=True, slots=True)
class Token:
    token_id: str
    uses_left: int
    expires_at: float
    created_at: float
    revoked: bool
    allowed_routes: tuple[IPNetwork, ...] = ()
    label: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.token_id,
            "uses_left": self.uses_left,
            "expires_at": int(self.expires_at),
            "created_at": int(self.created_at),
            "revoked": self.revoked,
            "allowed_routes": [str(route) for route in self.allowed_routes],
            "label": self.label,
        }


def _whole_seconds(moment: float | None) -> int | None:
    return None if moment is None else int(moment)


def _milliseconds(moment: float | None) -> float | None:
    return None if moment is None else round(moment, 3)


def parse_routes(
    value: object, mesh: IPNetwork, protected: tuple[IPAddress, ...] = ()
) -> tuple[IPNetwork, ...]:
    """Routes a peer may carry: a list (or comma-separated text) of CIDRs that take no traffic
    from anyone who did not ask for it: never a default route, loopback, link-local or
    multicast space, the mesh itself, or the rendezvous's own addresses (`protected`)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise InvalidInput("routes must be a list of CIDRs such as 192.168.1.0/24")
    if len(items) > MAX_ROUTES:
        raise InvalidInput(f"at most {MAX_ROUTES} routes per peer")
    routes: list[IPNetwork] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        route = parse_cidr(item, "route")
        check_route(route, mesh, protected)
        if route not in routes:
            routes.append(route)
    check_carried(tuple(routes))
    return tuple(routes)


def check_carried(routes: tuple[IPNetwork, ...]) -> None:
    """The routes of one peer together cover no more than MAX_CARRIED in each family."""
    for version, limit in MAX_CARRIED.items():
        covered = sum(route.num_addresses for route in routes if route.version == version)
        if covered > limit:
            size = "a /8" if version == 4 else "a /32"
            raise InvalidInput(
                f"these routes cover {covered:,} IPv{version} addresses; a peer carries at most "
                f"{size}'s worth (its LANs, not a share of the internet)"
            )


def check_route(route: IPNetwork, mesh: IPNetwork, protected: tuple[IPAddress, ...]) -> None:
    if route.prefixlen == 0:
        raise InvalidInput(f"route {route} is a default route: a peer never carries all traffic")
    for space, what in _FORBIDDEN_SPACES:
        if route.version == space.version and route.overlaps(space):
            raise InvalidInput(f"route {route} overlaps {what} ({space})")
    if route.version == mesh.version and route.overlaps(mesh):
        raise InvalidInput(f"route {route} overlaps the mesh network {mesh}")
    for address in protected:
        if address in route:
            raise InvalidInput(f"route {route} contains the rendezvous's address {address}")


def split_grant(
    requested: tuple[IPNetwork, ...], allowed: tuple[IPNetwork, ...]
) -> tuple[tuple[IPNetwork, ...], tuple[IPNetwork, ...]]:
    """(granted, pending): a requested route is granted when it lies inside an allowed one."""
    granted = tuple(r for r in requested if any(_inside(r, grant) for grant in allowed))
    return granted, tuple(r for r in requested if r not in granted)


def _inside(route: IPNetwork, grant: IPNetwork) -> bool:
    return route.version == grant.version and route.subnet_of(grant)  # type: ignore[arg-type]


def parse_cidr(text: object, what: str) -> IPNetwork:
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be a CIDR such as 192.168.1.0/24")
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError as error:
        if "host bits set" in str(error):
            loose = ipaddress.ip_network(text.strip(), strict=False)
            raise InvalidInput(f"{what} {text} has host bits set; did you mean {loose}?") from None
        raise InvalidInput(f"{what} {text!r} is not a CIDR such as 192.168.1.0/24") from None


def parse_mesh_network(text: str) -> IPNetwork:
    """The mesh's addresses: private space only (RFC 1918, the shared 100.64/10 of RFC 6598,
    IPv6 ULA), or every machine would route a piece of the internet into the mesh."""
    network = parse_cidr(text, "network")
    if network.num_addresses < 4:
        raise InvalidInput(f"network {network} is too small: it needs room for peers")
    if not any(_inside(network, space) for space in _MESH_SPACES):
        raise InvalidInput(
            f"network {network} is not private: use a part of 10.0.0.0/8, 172.16.0.0/12, "
            "192.168.0.0/16, 100.64.0.0/10 or fd00::/8, such as 10.77.0.0/16"
        )
    return network


def parse_label(text: str) -> str:
    """An operator's note on a token: one line of printable text."""
    label = text.strip()
    if len(label) > 64 or not label.isprintable():
        raise InvalidInput("--label must be one line of at most 64 printable characters")
    return label


def parse_duration(text: str) -> float:
    """`90s`, `30m`, `24h`, `7d`, `2w` or combinations such as `1h30m`, in seconds."""
    compact = text.strip().lower()
    parts = _DURATION_PART.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise InvalidInput(f"duration {text!r} must look like 90s, 30m, 24h, 7d or 1h30m")
    seconds = sum(int(number) * _SECONDS[unit] for number, unit in parts)
    if not 0 < seconds <= MAX_DURATION_S:
        raise InvalidInput(f"duration {text!r} must be longer than zero and at most 100 years")
    return float(seconds)


def _confirmed(peer: Peer) -> float:
    return peer.endpoint_confirmed_at if peer.endpoint_confirmed_at is not None else float("-inf")
