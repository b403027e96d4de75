"""Roaming, in the agent's core: when this host moves to another network (netlink, agent.py),
every path's endpoint is written again at the next round and the rendezvous is told first;
what the old LAN said is forgotten (no network: rounds of `Mesh.plan` against device states)."""

from __future__ import annotations

import ipaddress

from meshpeer.common.endpoints import Endpoint
from meshpeer.peer.discovery import RemotePeer, api_list, sighted
from meshpeer.peer.hints import Hints
from meshpeer.peer.mesh import Mesh
from meshpeer.peer.timers import PUNCH_AGAIN_S, RELAY_AFTER_S
from meshpeer.peer.uapi import DeviceStatus, PeerStatus

OWN, PEER, HIGHER = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32
RELAY: Endpoint = ("203.0.113.1", 51820)
MAPPING: Endpoint = ("198.51.100.20", 40000)
NEIGHBOUR: Endpoint = ("192.168.7.3", 51820)
HOME = ipaddress.IPv4Interface("192.168.7.2/24")
CAFE = ipaddress.IPv4Interface("10.20.0.9/24")


def mesh_on(
    endpoint: Endpoint,
    *,
    names_us: bool = False,
    on_lan: bool = True,
    own: bytes = OWN,
    rx: int = 500,
) -> Mesh:
    """A mesh whose one peer is up on `endpoint` (its mapping, its LAN address, the relay)."""
    mesh = Mesh(own)
    mesh.relay_endpoint = RELAY
    partners = frozenset({own}) if names_us else frozenset()
    mesh.merge(api_list([RemotePeer(PEER, "nas", "10.77.0.3", (), MAPPING, partners)]))
    mesh.set_own_lan([HOME])
    if on_lan:
        mesh.merge(sighted("lan", {PEER: [NEIGHBOUR]}))
    mesh.plan(DeviceStatus(), 99.0)
    mesh.plan(device(endpoint, rx), 100.0)
    mesh.plan(device(endpoint, rx), 101.0)
    return mesh


def device(endpoint: Endpoint, rx: int = 500) -> DeviceStatus:
    status = PeerStatus(PEER, endpoint, latest_handshake=100.0, rx_bytes=rx, tx_bytes=500)
    return DeviceStatus(peers={PEER: status})


def test_after_a_move_the_rendezvous_is_told_and_a_live_direct_path_punched_again() -> None:
    mesh = mesh_on(MAPPING)
    assert mesh.path(PEER) == "direct"
    quiet = mesh.plan(device(MAPPING), 102.0)
    assert not quiet.set_peers and not quiet.kick_rendezvous  # up, nothing to do

    mesh.set_own_lan([CAFE])
    mesh.roamed()
    moved = mesh.plan(device(MAPPING), 103.0)
    assert moved.kick_rendezvous
    [config] = moved.set_peers
    assert config.endpoint == MAPPING and config.kick  # written again: a new source address
    assert any("this host's network changed" in event for event in moved.events)
    answered = mesh.plan(device(MAPPING, rx=900), 103.5)  # the peer punched our new mapping
    assert not answered.set_peers and not answered.kick_rendezvous  # once per move
    assert mesh.path(PEER) == "direct"


def test_a_path_unanswered_since_the_move_is_down_and_relayed_by_us_whatever_the_keys() -> None:
    """A hotel's symmetric NAT: the peer's port-restricted NAT never lets us in from there.
    Its handshake is young, but nothing has answered since we moved: down, so after
    RELAY_AFTER_S we ask for the relay, and we start the session through it even with the
    higher key (the other side's session still looks up to it: it would not)."""
    mesh = mesh_on(MAPPING, own=HIGHER, on_lan=False)
    mesh.set_own_lan([CAFE])
    mesh.roamed()
    mesh.plan(device(MAPPING), 103.0)
    asking = mesh.plan(device(MAPPING), 103.0 + RELAY_AFTER_S)
    assert asking.relay_partners == frozenset({PEER})
    assert mesh.path(PEER) == "none"
    mesh.relay_stored(frozenset({PEER}))
    relayed = mesh.plan(device(MAPPING), 104.0 + RELAY_AFTER_S)
    assert [c.endpoint for c in relayed.set_peers] == [RELAY] and relayed.set_peers[0].kick
    assert PEER in relayed.remove  # written anew: a new session, through the relay, now


def test_the_answer_to_a_peer_written_anew_counts_though_its_byte_count_is_the_old_one() -> None:
    """CI's flake in test_roam_lab (the cloud VM relayed after a move to a symmetric NAT): the
    path had carried one handshake and nothing else (92 bytes in), and the punch's second
    initiation wrote the peer anew, whose counters start from nothing. Its answer made them 92
    again: "no change", so nothing counted as heard since the move, and the pair went to the
    relay with a fresh handshake in hand."""
    mesh = mesh_on(MAPPING, on_lan=False, rx=92)
    mesh.set_own_lan([CAFE])
    mesh.roamed()
    mesh.plan(device(MAPPING, rx=92), 102.0)
    again = mesh.plan(device(MAPPING, rx=92), 102.0 + PUNCH_AGAIN_S)
    assert PEER in again.remove  # written anew: a new initiation now
    answered = PeerStatus(PEER, MAPPING, latest_handshake=104.1, rx_bytes=92, tx_bytes=180)
    mesh.plan(DeviceStatus(peers={PEER: answered}), 104.25)
    mesh.plan(DeviceStatus(peers={PEER: answered}), 104.5)
    assert mesh.path(PEER) == "direct"
    late = mesh.plan(DeviceStatus(peers={PEER: answered}), 102.0 + RELAY_AFTER_S + 1)
    assert not late.relay_partners and mesh.path(PEER) == "direct"


def test_a_lan_path_goes_to_the_public_mapping_even_on_a_lan_of_the_same_subnet() -> None:
    """Most homes and cafés number their LAN 192.168.1.0/24: the peer's LAN address on the
    new one may be anyone's, and a live path pointed there stayed up (by its handshake's age)
    while nothing answered."""
    mesh = mesh_on(NEIGHBOUR)
    assert mesh.path(PEER) == "lan"
    mesh.set_own_lan([ipaddress.IPv4Interface("192.168.7.50/24")])  # another LAN, same subnet
    mesh.roamed()
    [config] = mesh.plan(device(NEIGHBOUR), 102.0).set_peers
    assert config.endpoint == MAPPING
    assert mesh.hints.endpoints("lan", PEER) == ()


def test_a_relayed_path_stays_on_the_relay_after_a_move() -> None:
    mesh = mesh_on(RELAY, names_us=True, on_lan=False)
    assert mesh.path(PEER) == "relay"
    mesh.set_own_lan([CAFE])
    mesh.roamed()
    plan = mesh.plan(device(RELAY), 102.0)
    assert plan.kick_rendezvous
    [config] = plan.set_peers
    assert config.endpoint == RELAY and config.kick


def test_sightings_of_a_lan_we_left_are_forgotten() -> None:
    hints = Hints()
    hints.set_own_lan([HOME])
    hints.replace("lan", {PEER: [NEIGHBOUR]}, {PEER})
    assert hints.endpoints("lan", PEER) == (NEIGHBOUR,)
    hints.set_own_lan([HOME, CAFE])
    assert hints.endpoints("lan", PEER) == (NEIGHBOUR,)
    hints.set_own_lan([CAFE])
    assert hints.endpoints("lan", PEER) == ()
