"""Peers' advertised routes never hijack the host: the pure decision (routes.py)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshpeer.peer.routes import Claim, decide, overlap
from meshpeer.rendezvous.model import IPAddress, IPNetwork

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
