"""Which of the peers' advertised routes this host may install: a pure decision.

An advertised route is a peer's claim: "send me the traffic for this prefix". Taken at its word,
a peer that claims 128.0.0.0/1 and 0.0.0.0/1 beats the default route by prefix length and takes
the host's internet traffic; one that claims the host's own LAN replaces its connected route; one
that claims the rendezvous's address cuts the agent off from the mesh. So a claim is refused when
it could take traffic from anything the agent does not own (the threat list of issue 12):

- a default route (/0) in either family;
- loopback, link-local, multicast and the other addresses that never leave a host or link
  (RFC 6890's special-purpose blocks that a route through a tunnel makes no sense for);
- the mesh network itself (other peers' addresses: WireGuard would move them to the claimer);
- a prefix holding an address that must stay where it is: the default gateway, this host's
  own addresses, the rendezvous, any peer's endpoint (the tunnel would swallow its own packets);
- a prefix overlapping, either way, a route this host already has and the agent did not make
  (connected LANs, static and DHCP routes, VPNs); default routes are not counted here, since
  every prefix overlaps them: the /0 and gateway rules above protect them instead;
- a prefix overlapping another peer's accepted route: WireGuard keeps one peer per prefix and
  hands it to whoever was set last, so the one accepted first keeps it (callers put the routes
  accepted in the previous round first, and a newcomer cannot take a running gateway's LAN).

The agent reads the routing table and addresses (`Links`) and passes them in; nothing here does
I/O. `plan_routes` turns a round's decision into what to add and remove; installing it, never
over foreign routes, is host_routes.py's job (through `Links.set_routes`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from meshpeer.common.endpoints import Endpoint, IPAddress, IPNetwork

NOT_ACCEPTED = "peers' routes are installed only with `meshpeer run --accept-routes`"

# Addresses no peer may route for (RFC 6890 and RFC 4291 2.4): a route through the tunnel for
# any of them would shadow the host's own or its link's.
SPECIAL_PURPOSE: tuple[tuple[IPNetwork, str], ...] = (
    (ipaddress.ip_network("0.0.0.0/8"), "this-network"),
    (ipaddress.ip_network("127.0.0.0/8"), "loopback"),
    (ipaddress.ip_network("169.254.0.0/16"), "link-local"),
    (ipaddress.ip_network("224.0.0.0/4"), "multicast"),
    (ipaddress.ip_network("255.255.255.255/32"), "broadcast"),
    (ipaddress.ip_network("::/128"), "unspecified"),
    (ipaddress.ip_network("::1/128"), "loopback"),
    (ipaddress.ip_network("::ffff:0:0/96"), "IPv4-mapped"),
    (ipaddress.ip_network("fe80::/10"), "link-local"),
    (ipaddress.ip_network("ff00::/8"), "multicast"),
)


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The main routing table and this host's addresses, as the route decision needs them."""

    foreign: tuple[IPNetwork, ...]  # every route the agent did not install
    owned: frozenset[str]  # ours: our protocol, on our interface
    default_gateways: tuple[IPAddress, ...]
    addresses: tuple[IPAddress, ...]  # this host's, on every link


@dataclass(frozen=True, slots=True)
class Claim:
    """One route one peer advertises."""

    peer_key: bytes
    peer_name: str
    route: IPNetwork


@dataclass(frozen=True, slots=True)
class Refusal:
    claim: Claim
    reason: str

    def __str__(self) -> str:
        return f"not installing {self.claim.route} from peer {self.claim.peer_name}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Decision:
    accepted: tuple[Claim, ...]
    refused: tuple[Refusal, ...]

    def routes_of(self, peer_key: bytes) -> tuple[str, ...]:
        """A peer's accepted routes, as WireGuard's AllowedIPs take them."""
        return tuple(str(c.route) for c in self.accepted if c.peer_key == peer_key)


def decide(
    claims: Iterable[Claim],
    foreign: Iterable[IPNetwork],
    protected: Mapping[IPAddress, str],
    mesh: IPNetwork,
    previous: Collection[Claim] = (),
) -> Decision:
    """Split `claims` into the routes to install and the refused, each with its reason.

    `foreign`: the routes of the main table the agent did not install; `protected`: addresses
    that must keep their path, each with what it is ("the default gateway"); `previous`: the
    claims accepted last time, which keep their prefix against newcomers.
    """
    own_routes = [route for route in foreign if route.prefixlen > 0]
    unique = list(dict.fromkeys(claims))
    ordered = [c for c in unique if c in previous] + [c for c in unique if c not in previous]
    accepted: list[Claim] = []
    refused: list[Refusal] = []
    for claim in ordered:
        reason = _hijack(claim.route, own_routes, protected, mesh) or _taken(claim, accepted)
        if reason is None:
            accepted.append(claim)
        else:
            refused.append(Refusal(claim, reason))
    return Decision(tuple(accepted), tuple(refused))


def _hijack(
    route: IPNetwork,
    foreign: list[IPNetwork],
    protected: Mapping[IPAddress, str],
    mesh: IPNetwork,
) -> str | None:
    """Why installing `route` would take traffic from the host, or None."""
    if route.prefixlen == 0:
        return "a default route"
    for address, what in protected.items():  # first: the likeliest target says most
        if address.version == route.version and address in route:
            return f"contains {what} ({address})"
    for existing in foreign:
        if overlap(route, existing):
            return f"overlaps this host's route to {existing}"
    if overlap(route, mesh):
        return f"overlaps the mesh network {mesh}"
    for block, what in SPECIAL_PURPOSE:
        if overlap(route, block):
            return f"overlaps the {what} block {block}"
    return None


def _taken(claim: Claim, accepted: list[Claim]) -> str | None:
    for other in accepted:
        if other.peer_key != claim.peer_key and overlap(claim.route, other.route):
            return f"overlaps {other.route}, routed to peer {other.peer_name}"
    return None


def overlap(one: IPNetwork, other: IPNetwork) -> bool:
    """Either contains the other (two prefixes overlap only that way); never across families."""
    if one.version != other.version:
        return False
    return one.overlaps(other)


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """The routes of ours the main table must hold after this round, and what was refused."""

    accepted: tuple[Claim, ...] = ()
    refused: tuple[Refusal, ...] = ()
    owned: frozenset[str] | None = None  # ours as the table was read; None: not read

    @property
    def wanted(self) -> frozenset[str]:
        return frozenset(str(claim.route) for claim in self.accepted)

    @property
    def changes(self) -> bool:
        """The table was read and differs from what it must hold."""
        return self.owned is not None and self.wanted != self.owned


def refuse_all(claims: Iterable[Claim]) -> Decision:
    """Without --accept-routes: every claim refused, and said so (once, host_routes.py)."""
    return Decision((), tuple(Refusal(claim, NOT_ACCEPTED) for claim in claims))


def protected_addresses(
    table: RouteTable,
    rendezvous: Iterable[IPAddress],
    peer_endpoints: Iterable[tuple[str, Endpoint]],
    device_endpoints: Iterable[Endpoint],
) -> dict[IPAddress, str]:
    """Addresses no peer's route may cover, each with what it is (for the log line).
    `peer_endpoints`: each candidate endpoint with its peer's name, in a stable order;
    `device_endpoints`: wherever WireGuard sends now (the rendezvous, a roamed peer)."""
    protected: dict[IPAddress, str] = {}
    # In a fixed order, first name kept: a refusal names the same address every round.
    for address in table.default_gateways:
        protected.setdefault(address, "the default gateway")
    for address in table.addresses:
        protected.setdefault(address, "this host's address")
    for address in sorted(rendezvous, key=str):
        protected.setdefault(address, "the rendezvous")
    for name, endpoint in peer_endpoints:
        protected.setdefault(ipaddress.ip_address(endpoint[0]), f"the endpoint of peer {name}")
    for endpoint in device_endpoints:
        protected.setdefault(ipaddress.ip_address(endpoint[0]), "a WireGuard endpoint")
    return protected
