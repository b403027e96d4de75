"""Peers' advertised routes never hijack the host: the pure decision (routes.py), the netlink
side that installs without replacing (Links), and the agent's glue (HostRoutes), without a
network. The lab replays the attack for real: tests/test_routes_lab.py."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.exceptions import NetlinkError

from meshpeer.common.endpoints import IPAddress, IPNetwork
from meshpeer.peer.discovery import RemotePeer, api_delta, api_list
from meshpeer.peer.host_routes import HostRoutes
from meshpeer.peer.links import RTPROT_MESHPEER, Links
from meshpeer.peer.mesh import Mesh
from meshpeer.peer.plan import Surroundings
from meshpeer.peer.routes import NOT_ACCEPTED, Claim, RouteTable, decide, overlap
from meshpeer.peer.state import Membership
from meshpeer.peer.status import Identity, RendezvousState
from meshpeer.peer.uapi import DeviceStatus
from tests.blocking import forbid_on_loop_thread

net = ipaddress.ip_network
addr = ipaddress.ip_address
MESH = net("10.77.0.0/16")
EVIL, GOOD, OWN = bytes([6]) * 32, bytes([7]) * 32, bytes([9]) * 32
# A home host: its LAN, its default routes, an IPv6 prefix; the agent's own routes not among them.
HOST_ROUTES = [
    net("0.0.0.0/0"),
    net("192.168.1.0/24"),
    net("::/0"),
    net("2001:db8:1::/64"),
    net("fe80::/64"),
]
PROTECTED: dict[IPAddress, str] = {
    addr("192.168.1.1"): "the default gateway",
    addr("192.168.1.2"): "this host's address",
    addr("203.0.113.2"): "the rendezvous",
    addr("198.51.100.7"): "the endpoint of peer office",
}
ATTACK = ["128.0.0.0/1", "64.0.0.0/2", "::/0", "192.168.1.0/24"]


def claims(key: bytes, name: str, *routes: str) -> list[Claim]:
    return [Claim(key, name, net(route)) for route in routes]


def test_the_reported_attack_is_refused_route_by_route_and_a_real_lan_is_accepted() -> None:
    wanted = claims(EVIL, "mallory", *ATTACK) + claims(GOOD, "office", "10.1.0.0/24")
    decision = decide(wanted, HOST_ROUTES, PROTECTED, MESH)

    assert [str(c.route) for c in decision.accepted] == ["10.1.0.0/24"]
    reasons = {str(r.claim.route): r.reason for r in decision.refused}
    assert reasons == {
        "128.0.0.0/1": "contains the default gateway (192.168.1.1)",
        "64.0.0.0/2": "overlaps the loopback block 127.0.0.0/8",
        "::/0": "a default route",
        "192.168.1.0/24": "contains the default gateway (192.168.1.1)",
    }
    assert decision.routes_of(GOOD) == ("10.1.0.0/24",) and decision.routes_of(EVIL) == ()
    assert str(decision.refused[0]) == (
        "not installing 128.0.0.0/1 from peer mallory: contains the default gateway (192.168.1.1)"
    )


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        ("0.0.0.0/0", "a default route"),
        ("::/0", "a default route"),
        ("127.0.0.0/8", "loopback"),
        ("126.0.0.0/7", "loopback"),  # contains it
        ("127.0.0.1/32", "loopback"),  # inside it
        ("::1/128", "loopback"),
        ("169.254.169.254/32", "link-local"),  # the cloud metadata address
        ("fe80:0:0:1::/64", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("239.1.0.0/16", "multicast"),
        ("ff02::/16", "multicast"),
        ("10.0.0.0/8", "the mesh network 10.77.0.0/16"),  # contains it
        ("10.77.0.5/32", "the mesh network"),  # another peer's address: WireGuard would move it
        ("192.168.0.0/16", "contains the default gateway"),  # contains the LAN
        ("192.168.1.2/32", "contains this host's address"),
        ("192.168.1.192/26", "overlaps this host's route to 192.168.1.0/24"),  # a slice of its LAN
        ("203.0.113.0/24", "contains the rendezvous"),
        ("198.51.100.7/32", "contains the endpoint of peer office"),
        ("2001:db8::/32", "overlaps this host's route to 2001:db8:1::/64"),
        ("2001:db8:1:0:8000::/65", "overlaps this host's route to 2001:db8:1::/64"),
    ],
)
def test_each_kind_of_hijack_is_refused_with_its_reason(route: str, reason: str) -> None:
    decision = decide(claims(EVIL, "mallory", route), HOST_ROUTES, PROTECTED, MESH)
    assert decision.accepted == ()
    [refusal] = decision.refused
    assert reason in refusal.reason


def test_a_default_route_of_the_host_does_not_block_every_prefix() -> None:
    routes = ["10.1.0.0/16", "172.16.0.0/12", "2001:db8:77::/48", "100.64.0.0/10"]
    decision = decide(claims(GOOD, "office", *routes), HOST_ROUTES, PROTECTED, MESH)
    assert [str(c.route) for c in decision.accepted] == routes and decision.refused == ()


def test_two_peers_never_share_a_prefix_and_the_one_already_routed_keeps_it() -> None:
    office = claims(GOOD, "office", "10.1.0.0/16", "10.1.5.0/24")  # its own overlap: fine
    rival = claims(EVIL, "mallory", "10.1.7.0/24", "10.1.0.0/16")
    first = decide(office + rival, [], {}, MESH)
    assert first.accepted == tuple(office)
    assert [r.reason for r in first.refused] == [
        "overlaps 10.1.0.0/16, routed to peer office",
        "overlaps 10.1.0.0/16, routed to peer office",
    ]
    # Listed first (say, a name sorting first) cannot take a prefix already routed elsewhere.
    second = decide(rival + office, [], {}, MESH, previous=first.accepted)
    assert second.accepted == tuple(office)
    assert decide(office + office, [], {}, MESH).accepted == tuple(office)  # deduplicated


networks_v4 = st.builds(
    lambda address, length: ipaddress.ip_network((address, length), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
networks_v6 = st.builds(
    lambda address, length: ipaddress.ip_network((address, length), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
# Near the host's own space, so that overlaps are common rather than one in billions.
near_home = st.builds(
    lambda length, offset: ipaddress.ip_network(
        (int(addr("192.168.0.0")) + offset, length), strict=False
    ),
    st.integers(8, 32),
    st.integers(0, 2**17),
)
networks: st.SearchStrategy[IPNetwork] = st.one_of(networks_v4, networks_v6, near_home)
addresses = st.one_of(
    st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
    st.integers(int(addr("192.168.0.0")), int(addr("192.169.255.255"))).map(ipaddress.IPv4Address),
    st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
)
claim_lists = st.lists(
    st.builds(Claim, st.sampled_from([EVIL, GOOD, OWN]), st.just("p"), networks), max_size=12
)


@settings(max_examples=400, deadline=None)
@given(
    wanted=claim_lists,
    foreign=st.lists(networks, max_size=8),
    protected=st.dictionaries(addresses, st.just("protected"), max_size=6),
    previous=claim_lists,
)
def test_no_accepted_route_can_take_anything_the_agent_does_not_own(
    wanted: list[Claim],
    foreign: list[IPNetwork],
    protected: dict[IPAddress, str],
    previous: list[Claim],
) -> None:
    decision = decide(wanted, foreign, protected, MESH, previous)

    accepted, refused = list(decision.accepted), [r.claim for r in decision.refused]
    assert sorted(map(repr, accepted + refused)) == sorted(map(repr, set(wanted)))
    for claim in accepted:
        route = claim.route
        assert route.prefixlen > 0 and not overlap(route, MESH)
        assert not any(overlap(route, f) for f in foreign if f.prefixlen > 0)
        assert not any(a in route for a in protected if a.version == route.version)
        assert not (route.is_loopback or route.is_link_local or route.is_multicast)
        for bad in ("127.0.0.1", "169.254.1.1", "224.0.0.1", "::1", "fe80::1", "ff02::1"):
            assert addr(bad) not in route
        rivals = [c for c in accepted if c.peer_key != claim.peer_key]
        assert not any(overlap(route, other.route) for other in rivals)
    assert all(r.reason for r in decision.refused)


# -- Links: install with `add` and our protocol, never `replace`; delete only ours ------------


class FakeRoute:
    """A route as pyroute2 hands it over: rtmsg fields by key, attributes by get_attr."""

    def __init__(self, dst: str, proto: int, oif: int | None, gateway: str | None = None) -> None:
        network = net(dst)
        self.fields = {"family": 2 if network.version == 4 else 10, "dst_len": network.prefixlen}
        self.fields["proto"] = proto
        dst_attr = None if network.prefixlen == 0 else str(network.network_address)
        self.attrs = {"RTA_DST": dst_attr, "RTA_OIF": oif, "RTA_GATEWAY": gateway}

    def __getitem__(self, key: str) -> int:
        return self.fields[key]

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


class FakeAddress:
    def __init__(self, address: str) -> None:
        self.address = address

    def get_attr(self, name: str) -> str:
        return self.address


class FakeIPRoute:
    """Stands in for pyroute2's IPRoute: a main table with the kernel's EEXIST and ESRCH."""

    WG0 = 7

    def __init__(self, table: list[FakeRoute]) -> None:
        self.table = table
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __enter__(self) -> FakeIPRoute:
        forbid_on_loop_thread("pyroute2.IPRoute")  # as the real one is (conftest.py)
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def link_lookup(self, ifname: str) -> list[int]:
        return [self.WG0] if ifname == "wg0" else []

    def get_routes(self, table: int) -> list[FakeRoute]:
        assert table == 254
        return list(self.table)

    def get_addr(self) -> list[FakeAddress]:
        return [FakeAddress("192.168.1.2"), FakeAddress("fe80::2")]

    def route(self, command: str, **spec: Any) -> None:
        self.calls.append((command, spec))
        same = [r for r in self.table if str(_prefix(r)) == spec["dst"]]
        if command == "add":
            if same:  # any route for the prefix, whoever made it (metric 0 for all here)
                raise NetlinkError(errno.EEXIST, "File exists")
            self.table.append(FakeRoute(spec["dst"], spec["proto"], spec["oif"]))
        elif command == "del":
            ours = (spec["proto"], spec["oif"])
            match = [r for r in same if (r["proto"], r.get_attr("RTA_OIF")) == ours]
            if not match:
                raise NetlinkError(errno.ESRCH, "No such process")
            self.table.remove(match[0])
        else:
            raise AssertionError(f"{command} is never used on routes")


def _prefix(route: FakeRoute) -> IPNetwork:
    destination = route.get_attr("RTA_DST") or ("0.0.0.0" if route["family"] == 2 else "::")  # noqa: S104
    return net(f"{destination}/{route['dst_len']}")


def home_table() -> list[FakeRoute]:
    return [
        FakeRoute("0.0.0.0/0", 3, 2, gateway="192.168.1.1"),
        FakeRoute("192.168.1.0/24", 2, 2),
        FakeRoute("10.77.0.0/16", 2, FakeIPRoute.WG0),  # the mesh, connected: not ours
        FakeRoute("10.5.0.0/16", RTPROT_MESHPEER, 9),  # another agent's, on its own link
        FakeRoute("10.1.0.0/24", RTPROT_MESHPEER, FakeIPRoute.WG0),  # ours
    ]


def test_links_read_the_table_telling_ours_from_everyone_elses() -> None:
    ip = FakeIPRoute(home_table())
    table = Links(lambda: ip).route_table("wg0")
    assert table.owned == {"10.1.0.0/24"}
    assert [str(r) for r in table.foreign] == [
        "0.0.0.0/0",
        "192.168.1.0/24",
        "10.77.0.0/16",
        "10.5.0.0/16",
    ]
    assert table.default_gateways == (addr("192.168.1.1"),)
    assert table.addresses == (addr("192.168.1.2"), addr("fe80::2"))


def test_links_add_with_our_protocol_never_replace_and_delete_only_ours() -> None:
    ip = FakeIPRoute(home_table())
    links = Links(lambda: ip)
    owned = links.route_table("wg0").owned
    failed = links.set_routes("wg0", {"10.2.0.0/24", "10.5.0.0/16"}, owned)

    ours = {"oif": FakeIPRoute.WG0, "proto": RTPROT_MESHPEER, "table": 254}
    assert ip.calls == [
        ("del", {"dst": "10.1.0.0/24", **ours}),
        ("add", {"dst": "10.2.0.0/24", **ours}),
        ("add", {"dst": "10.5.0.0/16", **ours}),
    ]
    assert list(failed) == ["10.5.0.0/16"] and "EEXIST" in failed["10.5.0.0/16"]
    assert links.route_table("wg0").owned == {"10.2.0.0/24"}
    assert [str(_prefix(r)) for r in ip.table if r["proto"] == RTPROT_MESHPEER] == [
        "10.5.0.0/16",  # the other agent's: untouched
        "10.2.0.0/24",
    ]


# -- the agent's glue: AllowedIPs, no table at all without --accept-routes, warn once ---------


class FakeLinks:
    """Links over a FakeIPRoute, counting how often the table is read."""

    def __init__(self, table: list[FakeRoute]) -> None:
        self.ip = FakeIPRoute(table)
        self.real = Links(lambda: self.ip)
        self.reads = 0

    def route_table(self, ifname: str) -> RouteTable:
        self.reads += 1
        return self.real.route_table(ifname)

    def set_routes(self, ifname: str, wanted: set[str], owned: frozenset[str]) -> dict[str, str]:
        return self.real.set_routes(ifname, wanted, owned)


MEMBERSHIP = Membership(
    "http://203.0.113.2:51821", "c", "me", "10.77.0.9", "10.77.0.0/16", "mesh.internal",
    "203.0.113.2:53", "k", "203.0.113.2:51820", "10.77.0.1",
)  # fmt: skip


def mesh_with_attacker() -> Mesh:
    mesh = Mesh(OWN)
    evil = RemotePeer(EVIL, "mallory", "10.77.0.66", (*ATTACK, "10.99.0.0/24"), None)
    good = RemotePeer(GOOD, "office", "10.77.0.2", ("10.1.0.0/24",), ("198.51.100.7", 51820))
    mesh.merge(api_list([evil, good]))
    return mesh


def surroundings(table: RouteTable | None) -> Surroundings:
    identity = Identity(MEMBERSHIP.name, MEMBERSHIP.address, "wg0", "userspace", None)
    state = RendezvousState(MEMBERSHIP.api_url)
    return Surroundings(identity, state, net(MEMBERSHIP.network), frozenset(), table)


def rounds(routes: HostRoutes, mesh: Mesh, count: int) -> None:
    """Reconcile rounds as the agent runs them: the table read only when the core asks,
    the core's plan, its routes installed."""
    mesh.accept_routes = routes.accept  # the agent sets both from --accept-routes

    async def scenario() -> None:
        for _ in range(count):
            table = await routes.read_table() if mesh.wants_route_table() else None
            plan = mesh.plan(DeviceStatus(), 100.0, surroundings(table))
            await routes.install(plan.routes)

    asyncio.run(scenario())


def test_without_accept_routes_no_route_is_read_or_installed_and_allowed_ips_hold_one_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    links = FakeLinks(home_table()[:2])
    routes = HostRoutes(links, "wg0", accept=False)  # type: ignore[arg-type]
    mesh = mesh_with_attacker()
    with caplog.at_level(logging.INFO, "meshpeer.peer.routes"):
        rounds(routes, mesh, 3)

    assert links.reads == 0 and links.ip.calls == []
    plan = mesh.plan(DeviceStatus(), 200.0)
    assert {c.public_key: c.allowed_ips for c in plan.set_peers} == {
        EVIL: ("10.77.0.66/32",),
        GOOD: ("10.77.0.2/32",),
    }
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6 and all(NOT_ACCEPTED in line for line in lines)  # once, not 3 times


def test_with_accept_routes_only_the_safe_routes_are_installed_and_allowed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    links = FakeLinks(home_table()[:2])
    routes = HostRoutes(links, "wg0", accept=True)  # type: ignore[arg-type]
    mesh = mesh_with_attacker()
    with caplog.at_level(logging.WARNING, "meshpeer.peer.routes"):
        rounds(routes, mesh, 3)

    assert [(c, s["dst"]) for c, s in links.ip.calls] == [
        ("add", "10.1.0.0/24"),
        ("add", "10.99.0.0/24"),
    ]
    assert mesh.allowed_ips(mesh.peers[EVIL]) == ("10.77.0.66/32", "10.99.0.0/24")
    assert mesh.allowed_ips(mesh.peers[GOOD]) == ("10.77.0.2/32", "10.1.0.0/24")
    refused = sorted(r.getMessage() for r in caplog.records)
    assert len(refused) == len(ATTACK)  # one line each, not one a round
    assert all(line.startswith("not installing ") for line in refused)

    mesh.merge(api_delta([], [EVIL]))  # mallory removed: its route goes, exactly that one
    rounds(routes, mesh, 1)
    assert links.ip.calls[-1][0] == "del" and links.ip.calls[-1][1]["dst"] == "10.99.0.0/24"
    assert [str(_prefix(r)) for r in links.ip.table] == [
        "0.0.0.0/0",
        "192.168.1.0/24",
        "10.1.0.0/24",
    ]

    asyncio.run(routes.remove())  # on exit: ours go, the rest stays
    assert [str(_prefix(r)) for r in links.ip.table] == ["0.0.0.0/0", "192.168.1.0/24"]


def test_a_route_that_appears_between_reading_and_adding_is_skipped_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    links = FakeLinks(home_table()[:2])
    real_read = links.route_table

    def read_then_race(ifname: str) -> RouteTable:
        table = real_read(ifname)
        if not any(str(_prefix(r)) == "10.1.0.0/24" for r in links.ip.table):
            links.ip.table.append(FakeRoute("10.1.0.0/24", 4, 2))  # `ip route add ... static`
        return table

    links.route_table = read_then_race  # type: ignore[method-assign]
    routes = HostRoutes(links, "wg0", accept=True)  # type: ignore[arg-type]
    mesh = Mesh(OWN)
    mesh.merge(api_list([RemotePeer(GOOD, "office", "10.77.0.2", ("10.1.0.0/24",), None)]))
    with caplog.at_level(logging.WARNING, "meshpeer.peer.routes"):
        rounds(routes, mesh, 3)

    [line] = [r.getMessage() for r in caplog.records if "EEXIST" in r.getMessage()]
    assert line.startswith("not installing 10.1.0.0/24 from peer office")
    static = [r for r in links.ip.table if str(_prefix(r)) == "10.1.0.0/24"]
    assert [r["proto"] for r in static] == [4]  # the static route, untouched
    assert mesh.allowed_ips(mesh.peers[GOOD]) == ("10.77.0.2/32",)  # refused next round
