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
from meshpeer.peer.timers import LAN_TRY_EVERY_S
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
    for second in range(102, 400):
        wire.rx += 148
        wire.handshake = 100.5 + 120 * ((second - 100) // 120)
        wire.apply(mesh, float(second))
        assert wire.endpoint == PUBLIC, second
    assert mesh.path(PEER) == "direct"
