"""The agent's core and the relay: when a pair goes through the rendezvous, how the path is
named, and how a relayed pair finds its way back to a direct path (no network: rounds of
`Mesh.plan` against device states as WireGuard would report them)."""

from __future__ import annotations

import ipaddress

from meshpeer.common.endpoints import Endpoint
from meshpeer.peer.discovery import RemotePeer, api_list, sighted
from meshpeer.peer.mesh import Mesh
from meshpeer.peer.timers import (
    DIRECT_TRY_S,
    PUNCH_AGAIN_S,
    RECONCILE_S,
    RELAY_AFTER_S,
    SETTLING_S,
    SETTLING_TICK_S,
)
from meshpeer.peer.uapi import DeviceStatus, PeerStatus

OWN, PEER = bytes([1]) * 32, bytes([2]) * 32
RELAY: Endpoint = ("203.0.113.1", 51820)
MAPPING: Endpoint = ("198.51.100.20", 40000)
MOVED: Endpoint = ("198.51.100.20", 40999)


def mesh_with(
    peer_endpoint: Endpoint | None = MAPPING,
    names_us: bool = False,
    own: bytes = OWN,
    lan_endpoints: tuple[Endpoint, ...] = (),
) -> Mesh:
    mesh = Mesh(own)
    mesh.relay_endpoint = RELAY
    partners = frozenset({own}) if names_us else frozenset()
    peer = RemotePeer(PEER, "nas", "10.77.0.3", (), peer_endpoint, partners, lan_endpoints)
    mesh.merge(api_list([peer]))
    return mesh


def device(endpoint: Endpoint | None, handshake: float | None = None, rx: int = 0) -> DeviceStatus:
    status = PeerStatus(PEER, endpoint, latest_handshake=handshake, rx_bytes=rx)
    return DeviceStatus(peers={PEER: status})


def test_a_punch_without_a_handshake_asks_for_the_relay_then_uses_it() -> None:
    mesh = mesh_with()
    first = mesh.plan(DeviceStatus(), 100.0)
    assert first.set_peers[0].endpoint == MAPPING and first.relay_partners is None
    waiting = mesh.plan(device(MAPPING), 100.0 + RELAY_AFTER_S - 0.5)
    assert waiting.relay_partners is None
    asking = mesh.plan(device(MAPPING), 100.0 + RELAY_AFTER_S)
    assert asking.relay_partners == frozenset({PEER})
    assert any(
        f"punch failed for {RELAY_AFTER_S:.0f} s: relaying via 203.0.113.1:51820" in e
        for e in asking.events
    )
    mesh.relay_stored(frozenset({PEER}))
    [relayed] = mesh.plan(device(MAPPING), 100.0 + RELAY_AFTER_S + 1).set_peers
    assert relayed.endpoint == RELAY and relayed.kick
    up = mesh.plan(device(RELAY, handshake=105.5), 106.0)
    assert mesh.path(PEER) == "relay"
    assert any(
        "none -> relay (handshake through the relay at 203.0.113.1:51820)" in e for e in up.events
    )
    assert up.relay_partners is None  # the rendezvous holds what we asked


def test_a_punch_that_works_never_asks_for_the_relay() -> None:
    mesh = mesh_with()
    mesh.plan(DeviceStatus(), 100.0)
    mesh.plan(device(MAPPING, handshake=100.5), 101.0)
    later = mesh.plan(device(MAPPING, handshake=100.5), 100.0 + 3 * RELAY_AFTER_S)
    assert mesh.path(PEER) == "direct" and later.relay_partners is None


def test_a_peer_that_asked_for_the_relay_is_reached_through_it_at_once() -> None:
    mesh = mesh_with(names_us=True)
    [config] = mesh.plan(DeviceStatus(), 100.0).set_peers
    assert config.endpoint == RELAY and config.kick and config.keepalive_s > 0


def test_a_relayed_pair_tries_direct_when_the_mapping_moves_and_keeps_what_answers() -> None:
    mesh = mesh_with(names_us=True)
    mesh.plan(DeviceStatus(), 100.0)
    mesh.plan(device(RELAY, handshake=100.5, rx=100), 101.0)
    assert mesh.path(PEER) == "relay"
    moved = RemotePeer(PEER, "nas", "10.77.0.3", (), MOVED, frozenset({OWN}))
    mesh.merge(api_list([moved]))
    [trying] = mesh.plan(device(RELAY, handshake=100.5, rx=100), 102.0).set_peers
    assert trying.endpoint == MOVED and trying.kick
    during = mesh.plan(device(MOVED, handshake=100.5, rx=100), 103.0)
    assert mesh.path(PEER) == "relay" and not during.set_peers  # a try, not a change yet
    answered = device(MOVED, handshake=100.5, rx=400)  # packets came from the direct endpoint
    [echo] = mesh.plan(answered, 102.0 + DIRECT_TRY_S).set_peers
    assert echo.endpoint == MOVED and echo.kick  # answered back: the peer may be trying too
    done = mesh.plan(answered, 103.0 + DIRECT_TRY_S)
    assert not done.set_peers and mesh.path(PEER) == "direct"
    assert any("relay -> direct (a direct path answers)" in event for event in done.events)


def test_a_direct_try_answers_at_once_what_reaches_it_inside_the_other_sides_window() -> None:
    # Both sides of a relayed pair try at about the same time, and a keepalive carries a try:
    # nothing answers it. The side whose packet got in first (the other NAT had a pinhole) hears
    # nothing back, since the other side's packet went out before ours opened our own NAT. If
    # the side that was reached answers only at the end of its try, the first side has gone
    # back to the relay by then, its kick moves the other side there too, and the pair stays
    # relayed until the next periodic try, 5 minutes on (a lab flake found it).
    mesh = mesh_with(names_us=True)
    mesh.plan(DeviceStatus(), 100.0)
    mesh.plan(device(RELAY, handshake=100.5, rx=100), 101.0)
    moved = RemotePeer(PEER, "nas", "10.77.0.3", (), MOVED, frozenset({OWN}))
    mesh.merge(api_list([moved]))
    [trying] = mesh.plan(device(RELAY, handshake=100.5, rx=100), 102.0).set_peers
    assert trying.endpoint == MOVED and trying.kick
    reached = device(MOVED, handshake=100.5, rx=132)  # the other side's try got in
    [answer] = mesh.plan(reached, 102.0 + SETTLING_TICK_S).set_peers
    assert answer.endpoint == MOVED and answer.kick
    assert not mesh.plan(reached, 102.0 + 2 * SETTLING_TICK_S).set_peers  # once a try
    assert mesh.path(PEER) == "relay"  # still a try: its end decides
    mesh.plan(reached, 102.0 + DIRECT_TRY_S)
    mesh.plan(reached, 103.0 + DIRECT_TRY_S)
    assert mesh.path(PEER) == "direct"


def test_a_direct_try_nothing_answers_goes_back_to_the_relay_within_the_try() -> None:
    mesh = mesh_with(names_us=True)
    mesh.plan(DeviceStatus(), 100.0)
    mesh.plan(device(RELAY, handshake=100.5, rx=100), 101.0)
    moved = RemotePeer(PEER, "nas", "10.77.0.3", (), MOVED, frozenset({OWN}))
    mesh.merge(api_list([moved]))
    mesh.plan(device(RELAY, handshake=100.5, rx=100), 102.0)
    assert not mesh.plan(
        device(MOVED, handshake=100.5, rx=100), 102.0 + DIRECT_TRY_S - 0.1
    ).set_peers
    back = mesh.plan(device(MOVED, handshake=100.5, rx=100), 102.0 + DIRECT_TRY_S)
    [config] = back.set_peers
    assert config.endpoint == RELAY and config.kick
    assert any("direct try unanswered for 2 s" in event for event in back.events)
    mesh.plan(device(RELAY, handshake=100.5, rx=100), 105.0)
    assert mesh.path(PEER) == "relay"


def test_after_a_rendezvous_restart_relayed_peers_are_written_anew() -> None:
    mesh = mesh_with(names_us=True)
    mesh.plan(DeviceStatus(), 100.0)
    mesh.plan(device(RELAY, handshake=100.5, rx=100), 101.0)
    assert not mesh.plan(device(RELAY, handshake=100.5, rx=100), 102.0).set_peers
    mesh.rendezvous_restarted()
    renewed = mesh.plan(device(RELAY, handshake=100.5, rx=100), 103.0)
    assert renewed.remove == [PEER]  # a new WireGuard peer: its first packet is an initiation
    [config] = renewed.set_peers
    assert config.endpoint == RELAY and config.kick
    assert not mesh.plan(device(RELAY, handshake=103.2, rx=200), 104.0).set_peers


def test_only_the_lower_key_starts_the_session_through_the_relay() -> None:
    """Initiations that cross at the relay are both lost for REKEY_TIMEOUT (seen in the lab:
    two symmetric NATs connected in 12 s instead of 7): the higher key points the peer at the
    relay without a new initiation and answers the lower key's; after a rendezvous restart
    only the lower key starts anew."""
    follower = mesh_with(names_us=True, own=bytes([3]) * 32)  # PEER (2...) leads
    turn = follower.plan(DeviceStatus(), 100.0)
    [config] = turn.set_peers
    assert config.endpoint == RELAY and not config.kick and turn.remove == []
    follower.plan(device(RELAY, handshake=101.5, rx=100), 102.0)
    assert follower.path(PEER) == "relay"
    follower.rendezvous_restarted()
    assert follower.plan(device(RELAY, handshake=101.5, rx=100), 103.0).remove == []

    leader = mesh_with(names_us=True)  # OWN (1...) leads
    turn = leader.plan(device(None), 100.0)
    assert [(c.endpoint, c.kick) for c in turn.set_peers] == [(RELAY, True)]
    assert turn.remove == [PEER]


def test_a_relayed_peer_seen_on_our_lan_where_it_said_it_is_is_tried_there() -> None:
    """A sighting of an endpoint the peer reported itself (PUT /v1/lan); the public addresses
    need not match (a NAT with an address pool gives two hosts of one LAN two)."""
    mesh = mesh_with(names_us=True, lan_endpoints=(("192.168.7.3", 51820),))
    mesh.own_public = ("192.0.2.99", 1234)
    mesh.set_own_lan([ipaddress.IPv4Interface("192.168.7.2/24")])
    mesh.plan(DeviceStatus(), 100.0)
    mesh.plan(device(RELAY, handshake=100.5, rx=100), 101.0)
    assert mesh.path(PEER) == "relay"
    mesh.merge(sighted("lan", {PEER: [("192.168.7.3", 51820)]}))
    [trying] = mesh.plan(device(RELAY, handshake=100.5, rx=100), 102.0).set_peers
    assert trying.endpoint == ("192.168.7.3", 51820) and trying.kick
    answered = device(("192.168.7.3", 51820), handshake=100.5, rx=300)
    mesh.plan(answered, 102.0 + DIRECT_TRY_S)
    mesh.plan(answered, 103.0 + DIRECT_TRY_S)
    assert mesh.path(PEER) == "lan"


def test_a_relayed_peer_sighted_where_it_never_said_it_is_is_not_tried() -> None:
    """A neighbour announcing the peer's key at its own address: never tried, from any live
    path (it could relay the try to the peer and hold the path, as the review of 81323bf saw)."""
    mesh = mesh_with(names_us=True, lan_endpoints=(("192.168.7.3", 51820),))
    mesh.set_own_lan([ipaddress.IPv4Interface("192.168.7.2/24")])
    mesh.plan(DeviceStatus(), 100.0)
    mesh.plan(device(RELAY, handshake=100.5, rx=100), 101.0)
    spoofed = [("192.168.7.66", 51820), ("192.168.7.3", 51821)]
    mesh.merge(sighted("lan", {PEER: spoofed}))
    for second in range(102, 200):  # the relayed path's own tries of the public mapping go on
        written = mesh.plan(device(RELAY, handshake=100.5, rx=100), float(second)).set_peers
        assert not {config.endpoint for config in written} & set(spoofed), second


def test_a_pair_that_went_direct_stops_naming_each_other() -> None:
    """Each side names the other back while it relays; once direct works it names it no more."""
    mesh = mesh_with(names_us=True)
    mesh.plan(DeviceStatus(), 100.0)
    relayed = mesh.plan(device(RELAY, handshake=100.5, rx=100), 101.0)
    assert relayed.relay_partners == frozenset({PEER})  # named back while relayed
    mesh.relay_stored(frozenset({PEER}))
    direct = device(MAPPING, handshake=100.5, rx=300)
    mesh.plan(direct, 102.0)  # the peer reached us directly: answered back
    assert mesh.plan(direct, 103.0).relay_partners == frozenset()


def test_a_punch_sends_its_second_initiation_early_once_a_turn_and_not_when_up() -> None:
    """WireGuard waits REKEY_TIMEOUT (5 s) to send an unanswered initiation again; the punch
    that needs a second packet (a symmetric NAT towards an address-restricted one) gets it
    PUNCH_AGAIN_S in, by writing the peer anew, and the relay's clock runs on."""
    mesh = mesh_with()
    assert mesh.plan(device(MAPPING), 100.0).set_peers[0].endpoint == MAPPING
    assert mesh.plan(device(MAPPING), 100.0 + PUNCH_AGAIN_S - 0.5).set_peers == []
    again = mesh.plan(device(MAPPING), 100.0 + PUNCH_AGAIN_S)
    assert [c.endpoint for c in again.set_peers] == [MAPPING] and again.remove == [PEER]
    assert mesh.plan(device(MAPPING), 100.0 + PUNCH_AGAIN_S + 0.5).set_peers == []
    asking = mesh.plan(device(MAPPING), 100.0 + RELAY_AFTER_S)
    assert asking.relay_partners == frozenset({PEER})  # counted from the first punch

    up = mesh_with()
    up.plan(device(MAPPING), 100.0)
    answered = up.plan(device(MAPPING, handshake=100.5), 100.0 + PUNCH_AGAIN_S)
    assert answered.set_peers == [] and answered.remove == []


def test_rounds_come_often_while_a_path_is_being_made_and_once_a_second_after() -> None:
    mesh = mesh_with()
    assert mesh.plan(DeviceStatus(), 100.0).next_round_s == SETTLING_TICK_S  # punching
    assert mesh.plan(device(MAPPING, handshake=100.2), 100.25).next_round_s == SETTLING_TICK_S
    settled = mesh.plan(device(MAPPING, handshake=100.2), 100.0 + SETTLING_S)
    assert settled.next_round_s == RECONCILE_S
