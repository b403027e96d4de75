"""A neighbour on the LAN against a live path (mDNS sightings are not authenticated): rounds of
`Mesh.plan` against a small model of WireGuard (it sends where it was last pointed, and roams
to whatever source an authenticated packet came from), second by second."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from meshpeer.common.endpoints import Endpoint
from meshpeer.peer.discovery import RemotePeer, api_list, sighted
from meshpeer.peer.mesh import Mesh
from meshpeer.peer.timers import DIRECT_TRY_S, LAN_TRY_EVERY_S
from meshpeer.peer.uapi import DeviceStatus, PeerStatus

OWN, PEER = bytes([1]) * 32, bytes([2]) * 32
RELAY: Endpoint = ("203.0.113.1", 51820)
PUBLIC: Endpoint = ("198.51.100.20", 40000)
OUR_LAN = ipaddress.IPv4Interface("192.168.7.2/24")
SPOOF_1: Endpoint = ("192.168.7.66", 51820)
SPOOF_2: Endpoint = ("192.168.7.66", 51821)


@dataclass
class Wire:
    """WireGuard's view of the one peer: where it sends, and what it received."""

    endpoint: Endpoint | None
    rx: int = 0

    def status(self) -> DeviceStatus:
        peer = PeerStatus(PEER, self.endpoint, latest_handshake=self.handshake, rx_bytes=self.rx)
        return DeviceStatus(peers={PEER: peer})

    handshake: float | None = None

    def apply(self, mesh: Mesh, now: float) -> None:
        for config in mesh.plan(self.status(), now).set_peers:
            if config.endpoint is not None:
                self.endpoint = config.endpoint


def live_mesh(relayed: bool) -> tuple[Mesh, Wire]:
    """A pair up through the relay (the peer asked for it) or on its public (direct) path,
    the peer's mapping on no LAN of ours."""
    mesh = Mesh(OWN)
    mesh.relay_endpoint = RELAY
    partners = frozenset({OWN}) if relayed else frozenset()
    mesh.merge(api_list([RemotePeer(PEER, "nas", "10.77.0.3", (), PUBLIC, partners)]))
    mesh.set_own_lan([OUR_LAN])
    wire = Wire(None)
    wire.apply(mesh, 100.0)
    assert wire.endpoint == (RELAY if relayed else PUBLIC)
    wire.handshake, wire.rx = 100.5, 148
    wire.apply(mesh, 101.0)
    assert mesh.path(PEER) == ("relay" if relayed else "direct")
    return mesh, wire


def stays_public(mesh: Mesh, wire: Wire) -> None:
    """Five minutes of a live public path, rehandshaking every 120 s: never off its mapping."""
    for second in range(102, 400):
        wire.rx += 148
        wire.handshake = 100.5 + 120 * ((second - 100) // 120)
        wire.apply(mesh, float(second))
        assert wire.endpoint == PUBLIC, second
    assert mesh.path(PEER) == "direct"


def test_alternating_spoofed_sightings_keep_a_relayed_path_off_the_relay() -> None:
    """Each new sighting was a try of the LAN, however often the sightings changed: a spoofer
    alternating two (an mDNS record re-announced with another port) kept a live relayed path
    pointed at nothing most of the time. A live path tries a sighting at most once a minute,
    relayed or not."""
    mesh, wire = live_mesh(relayed=True)
    off_relay = 0
    # The peer never sends first (an idle pair): only our own keepalives would bring it back.
    for second in range(102, 102 + int(2 * LAN_TRY_EVERY_S)):
        spoof = SPOOF_1 if second % 6 < 3 else SPOOF_2
        mesh.merge(sighted("lan", {PEER: [spoof]}))
        for tick in range(4):  # SETTLING_TICK_S rounds while a try runs
            wire.apply(mesh, second + tick / 4)
        off_relay += wire.endpoint != RELAY
    # One try a minute (of DIRECT_TRY_S, plus the round that notices) at most.
    assert off_relay <= 2 * 3, off_relay


SIGHTINGS: list[list[Endpoint]] = [[], [SPOOF_1], [SPOOF_2], [SPOOF_1, SPOOF_2], [SPOOF_2, SPOOF_1]]


@given(
    st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=180, max_size=180),
)
@settings(max_examples=50, deadline=None)
def test_no_spoofed_sightings_keep_a_live_public_path_off_it_more_than_2_s_a_minute(
    steps: list[tuple[int, bool]],
) -> None:
    """Whatever the sightings do second by second, and whether or not the peer sends (from its
    public endpoint: WireGuard roams back there), our side points elsewhere at most one try
    (DIRECT_TRY_S, and the round that notices) a minute."""
    mesh, wire = live_mesh(relayed=False)
    off: list[int] = []
    for second, (sighting, peer_sends) in enumerate(steps, start=102):
        mesh.merge(sighted("lan", {PEER: SIGHTINGS[sighting]}))
        wire.handshake = 100.5 + 120 * ((second - 100) // 120)  # WireGuard rekeys
        for tick in range(4):
            wire.apply(mesh, second + tick / 4)
        if peer_sends:
            wire.endpoint, wire.rx = PUBLIC, wire.rx + 100
        if wire.endpoint != PUBLIC:
            off.append(second)
    for start in off:
        assert sum(start <= s < start + LAN_TRY_EVERY_S for s in off) <= 3, off


def test_a_neighbour_relaying_a_lan_try_cannot_hold_a_live_public_path() -> None:
    """A neighbour whose sighted address forwards to the peer's public endpoint and back makes
    everything that comes from it authenticated, so a try of it would be kept (the path would
    say `lan`, and the neighbour could then drop the data). Found by the outside review of a
    live public path's LAN tries, which were taken back for it: a live public path is never
    pointed at a sighting, however long the sightings stay."""
    mesh, wire = live_mesh(relayed=False)
    mesh.merge(sighted("lan", {PEER: [SPOOF_1, SPOOF_2]}))
    stays_public(mesh, wire)


# Both behind one NAT (public address 198.51.100.20): the peer's real LAN endpoint, as it
# reported it over the API, and ours.
PEER_LAN: Endpoint = ("192.168.7.3", 51820)
OWN_PUBLIC_SAME_NAT: Endpoint = ("198.51.100.20", 40001)
OWN_PUBLIC_ELSEWHERE: Endpoint = ("203.0.113.77", 40001)


def public_path_mesh(own_public: Endpoint, reported: tuple[Endpoint, ...]) -> tuple[Mesh, Wire]:
    """A live public (direct) path to a peer that reported `reported` as its LAN endpoints,
    our own mapping as the rendezvous observed it being `own_public`."""
    mesh = Mesh(OWN)
    mesh.relay_endpoint = RELAY
    us = RemotePeer(OWN, "us", "10.77.0.2", (), own_public)
    peer = RemotePeer(PEER, "nas", "10.77.0.3", (), PUBLIC, frozenset(), reported)
    mesh.merge(api_list([us, peer]))
    mesh.set_own_lan([OUR_LAN])
    wire = Wire(None)
    wire.apply(mesh, 100.0)
    wire.handshake, wire.rx = 100.5, 148
    wire.apply(mesh, 101.0)
    assert wire.endpoint == PUBLIC and mesh.path(PEER) == "direct"
    return mesh, wire


def test_a_live_public_path_moves_to_a_reported_lan_endpoint_behind_our_own_nat() -> None:
    mesh, wire = public_path_mesh(OWN_PUBLIC_SAME_NAT, (PEER_LAN,))
    assert mesh.own_public == OWN_PUBLIC_SAME_NAT
    mesh.merge(sighted("lan", {PEER: [PEER_LAN]}))
    plan = mesh.plan(wire.status(), 102.0)
    assert [(c.endpoint, c.kick) for c in plan.set_peers] == [(PEER_LAN, True)]
    assert any("it is on our LAN" in event for event in plan.events)
    wire.endpoint = PEER_LAN
    assert mesh.path(PEER) == "direct"  # during the try: never "none"
    wire.rx += 148  # the peer answers from the LAN: WireGuard stays there
    for tick in range(1, 16):
        wire.apply(mesh, 102.0 + tick / 4)
    assert wire.endpoint == PEER_LAN and mesh.path(PEER) == "lan"
    for second in range(106, 400):  # and stays, tried no more
        wire.rx += 100
        wire.handshake = 100.5 + 120 * ((second - 100) // 120)
        assert mesh.plan(wire.status(), float(second)).set_peers == [], second


def test_an_unanswered_lan_try_goes_back_within_2_s_and_waits_a_minute() -> None:
    mesh, wire = public_path_mesh(OWN_PUBLIC_SAME_NAT, (PEER_LAN,))
    mesh.merge(sighted("lan", {PEER: [PEER_LAN]}))
    wire.apply(mesh, 102.0)
    assert wire.endpoint == PEER_LAN
    assert mesh.plan(wire.status(), 102.0 + DIRECT_TRY_S - 0.25).set_peers == []
    back = mesh.plan(wire.status(), 102.0 + DIRECT_TRY_S)
    assert [c.endpoint for c in back.set_peers] == [PUBLIC]
    assert any("LAN try unanswered for 2 s" in event for event in back.events)
    wire.endpoint = PUBLIC
    for second in range(105, 102 + int(LAN_TRY_EVERY_S)):
        assert mesh.plan(wire.status(), float(second)).set_peers == [], second
    [again] = mesh.plan(wire.status(), 102.0 + LAN_TRY_EVERY_S).set_peers
    assert again.endpoint == PEER_LAN


def test_a_lan_try_that_a_packet_on_the_hairpin_moved_back_is_set_again_once() -> None:
    """The peer's last packet on the public path (a ping's reply in the NAT's hairpin) arrives
    just after our try went out, and WireGuard roams back to the public endpoint: our next
    packet would move the peer back there too, and the pair would stay on the hairpin for
    LAN_TRY_EVERY_S. The try is set again, once; a LAN that never answers still costs one try."""
    mesh, wire = public_path_mesh(OWN_PUBLIC_SAME_NAT, (PEER_LAN,))
    mesh.merge(sighted("lan", {PEER: [PEER_LAN]}))
    wire.apply(mesh, 102.0)
    assert wire.endpoint == PEER_LAN
    wire.endpoint, wire.rx = PUBLIC, wire.rx + 100  # the reply from the hairpin
    [again] = mesh.plan(wire.status(), 102.25).set_peers
    assert again.endpoint == PEER_LAN and again.kick
    wire.endpoint, wire.rx = PUBLIC, wire.rx + 100  # and again: a LAN that does not work
    assert mesh.plan(wire.status(), 102.5).set_peers == []
    assert mesh.plan(wire.status(), 102.0 + DIRECT_TRY_S).set_peers == []  # roamed back: over
    for second in range(105, 102 + int(LAN_TRY_EVERY_S)):
        assert mesh.plan(wire.status(), float(second)).set_peers == [], second


def test_a_peer_that_reaches_us_on_its_reported_lan_endpoint_is_answered_there() -> None:
    """Its try of our LAN address made our WireGuard roam to its LAN endpoint: a keepalive
    back there, once, is what its try waits for."""
    mesh, wire = public_path_mesh(OWN_PUBLIC_SAME_NAT, (PEER_LAN,))
    mesh.merge(sighted("lan", {PEER: [PEER_LAN]}))
    wire.endpoint, wire.rx = PEER_LAN, wire.rx + 100
    [echo] = mesh.plan(wire.status(), 102.0).set_peers
    assert echo.endpoint == PEER_LAN and echo.kick
    wire.rx += 100
    assert mesh.plan(wire.status(), 103.0).set_peers == []
    assert mesh.path(PEER) == "lan"


def test_a_neighbour_announcing_the_peer_at_its_own_address_gets_no_try() -> None:
    """Behind our NAT, the peer reported its real LAN endpoint: a sighting anywhere else (a
    neighbour's own address, or the peer's address at another port) is never tried."""
    mesh, wire = public_path_mesh(OWN_PUBLIC_SAME_NAT, (PEER_LAN,))
    mesh.merge(sighted("lan", {PEER: [SPOOF_1, ("192.168.7.3", 51821)]}))
    stays_public(mesh, wire)


def test_a_reported_lan_endpoint_behind_another_public_address_gets_no_try() -> None:
    """The peer's mapping is not at our public address: it is not behind our NAT, so a LAN
    path cannot exist, whatever the sighting says (another site with the same private
    subnet, or a neighbour that took the address the peer reported there)."""
    mesh, wire = public_path_mesh(OWN_PUBLIC_ELSEWHERE, (PEER_LAN,))
    mesh.merge(sighted("lan", {PEER: [PEER_LAN]}))
    for second in range(102, 400):
        wire.rx += 148
        wire.handshake = 100.5 + 120 * ((second - 100) // 120)
        wire.apply(mesh, float(second))
        assert wire.endpoint == PUBLIC, second


def test_no_lan_try_before_the_rendezvous_has_told_us_our_own_mapping() -> None:
    mesh, wire = public_path_mesh(OWN_PUBLIC_SAME_NAT, (PEER_LAN,))
    mesh.own_public = None
    mesh.merge(sighted("lan", {PEER: [PEER_LAN]}))
    assert mesh.plan(wire.status(), 102.0).set_peers == []


def test_a_lan_path_that_stops_answering_goes_back_to_the_public_mapping() -> None:
    """Whoever holds the LAN address (a neighbour that passed the handshakes and now drops the
    data, or a peer gone off the LAN) keeps a `lan` path for STALL_S: then the path goes back
    to the peer's public mapping, and the LAN is tried again only after LAN_TRY_EVERY_S."""
    lan = ("192.168.7.3", 51820)
    mesh = Mesh(OWN)
    mesh.merge(api_list([RemotePeer(PEER, "nas", "10.77.0.3", (), PUBLIC, lan_endpoints=(lan,))]))
    mesh.set_own_lan([OUR_LAN])
    mesh.merge(sighted("lan", {PEER: [lan]}))

    def on(endpoint: Endpoint, rx: int, tx: int) -> DeviceStatus:
        status = PeerStatus(PEER, endpoint, latest_handshake=100.5, rx_bytes=rx, tx_bytes=tx)
        return DeviceStatus(peers={PEER: status})

    [first] = mesh.plan(DeviceStatus(), 100.0).set_peers
    assert first.endpoint == lan
    mesh.plan(on(lan, 148, 148), 101.0)
    assert mesh.path(PEER) == "lan"
    assert not mesh.plan(on(lan, 148, 1000), 101.5).set_peers  # data out, not answered yet
    [back] = mesh.plan(on(lan, 148, 2000), 102.5).set_peers
    assert back.endpoint == PUBLIC and back.kick
    mesh.plan(on(PUBLIC, 300, 2100), 103.0)
    assert mesh.path(PEER) == "direct"
    for now in range(104, 104 + int(LAN_TRY_EVERY_S) - 5):  # the LAN waits its minute
        assert not mesh.plan(on(PUBLIC, 300 + now, 2100 + now), float(now)).set_peers
