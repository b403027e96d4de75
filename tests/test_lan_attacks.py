"""The outside review of issue 17's authenticated LAN endpoints and roaming: attacks by a
neighbour on the LAN, a member, and the network on the path, each a test that failed on the
code it was found in."""

from __future__ import annotations

import ipaddress

from meshpeer.common.endpoints import Endpoint
from meshpeer.peer.discovery import RemotePeer, api_list, sighted
from meshpeer.peer.mesh import Mesh
from meshpeer.peer.uapi import DeviceStatus, PeerStatus

OWN, PEER = bytes([1]) * 32, bytes([2]) * 32
PUBLIC: Endpoint = ("198.51.100.20", 40000)
OUR_LAN = ipaddress.IPv4Interface("192.168.7.2/24")
PEER_LAN: Endpoint = ("192.168.7.3", 51820)


def on(endpoint: Endpoint, rx: int, tx: int) -> DeviceStatus:
    status = PeerStatus(PEER, endpoint, latest_handshake=100.5, rx_bytes=rx, tx_bytes=tx)
    return DeviceStatus(peers={PEER: status})


def test_a_lan_path_whose_sighting_is_withdrawn_still_goes_back_when_it_stops_answering() -> None:
    """Whoever holds the LAN address passes the handshakes (so the path comes up `lan`), then
    sends an mDNS goodbye for the sighting and drops the data. The path was called `lan` only
    while the sighting lasted: without it the path said `direct`, the stall check for a LAN
    path (paths.off_a_silent_lan) never fired, and the pair stayed pointed at the neighbour
    for as long as it kept passing handshakes. A peer gone off the LAN, its mDNS record
    expired, held the path the same way until the session expired (3 minutes)."""
    mesh = Mesh(OWN)
    peer = RemotePeer(PEER, "nas", "10.77.0.3", (), PUBLIC, lan_endpoints=(PEER_LAN,))
    mesh.merge(api_list([peer]))
    mesh.set_own_lan([OUR_LAN])
    mesh.merge(sighted("lan", {PEER: [PEER_LAN]}))
    [first] = mesh.plan(DeviceStatus(), 100.0).set_peers
    assert first.endpoint == PEER_LAN
    mesh.plan(on(PEER_LAN, 148, 148), 101.0)
    assert mesh.path(PEER) == "lan"
    mesh.merge(sighted("lan", {PEER: []}))  # the goodbye
    mesh.plan(on(PEER_LAN, 148, 1000), 101.5)  # data out, nothing back from now on
    assert mesh.path(PEER) == "lan"  # WireGuard still sends to the LAN endpoint
    back = [
        config.endpoint
        for now in (102.0, 102.5, 103.0, 103.5)
        for config in mesh.plan(on(PEER_LAN, 148, int(2000 * now)), now).set_peers
    ]
    assert back == [PUBLIC], back


def test_a_peer_whose_reported_lan_endpoint_is_its_public_mapping_is_direct() -> None:
    """A cloud VM has its public address on its link and reports it as its LAN endpoint: the
    path there is its public mapping, `direct` (the fix above must not call it `lan`)."""
    mesh = Mesh(OWN)
    peer = RemotePeer(PEER, "cloud", "10.77.0.3", (), PUBLIC, lan_endpoints=(PUBLIC,))
    mesh.merge(api_list([peer]))
    mesh.set_own_lan([OUR_LAN])
    [first] = mesh.plan(DeviceStatus(), 100.0).set_peers
    assert first.endpoint == PUBLIC
    mesh.plan(on(PUBLIC, 148, 148), 101.0)
    assert mesh.path(PEER) == "direct"


def test_after_a_move_no_lan_try_until_the_rendezvous_tells_our_new_mapping() -> None:
    """Our public address after a move is unknown until the rendezvous has seen the new
    mapping. With the old one kept, a peer at the site we left still looked 'behind our NAT':
    a neighbour on the new LAN (most use 192.168.x.0/24) holding the address that peer
    reported there got a LAN try of the live path, which it could relay to the peer's public
    mapping and keep."""
    us = RemotePeer(OWN, "us", "10.77.0.2", (), ("198.51.100.20", 40001))
    peer = RemotePeer(PEER, "nas", "10.77.0.3", (), PUBLIC, lan_endpoints=(PEER_LAN,))
    mesh = Mesh(OWN)
    mesh.merge(api_list([us, peer]))
    mesh.set_own_lan([OUR_LAN])
    mesh.plan(DeviceStatus(), 99.0)
    mesh.plan(on(PUBLIC, 148, 148), 100.0)
    mesh.plan(on(PUBLIC, 148, 148), 101.0)
    assert mesh.path(PEER) == "direct"
    cafe = ipaddress.IPv4Interface("192.168.7.77/24")  # another LAN, the same subnet
    mesh.set_own_lan([cafe])
    mesh.roamed()
    mesh.plan(on(PUBLIC, 148, 148), 102.0)
    mesh.plan(on(PUBLIC, 400, 400), 103.0)  # the peer answers us at the new address: up
    mesh.merge(sighted("lan", {PEER: [PEER_LAN]}))  # the neighbour's announcement
    for now in (104.0, 105.0, 106.0):
        endpoints = [config.endpoint for config in mesh.plan(on(PUBLIC, 400, 400), now).set_peers]
        assert PEER_LAN not in endpoints, now
