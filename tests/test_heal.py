"""Healing, in the agent's core: a live path whose traffic goes unanswered makes the agent tell
the rendezvous its mapping at once (no network: rounds of `Mesh.plan` against device states)."""

from __future__ import annotations

from meshpeer.peer.discovery import RemotePeer, api_list
from meshpeer.peer.mesh import Mesh
from meshpeer.peer.timers import RENDEZVOUS_KICK_EVERY_S, STALL_S
from meshpeer.peer.uapi import DeviceStatus, PeerStatus

OWN, PEER = bytes([1]) * 32, bytes([2]) * 32
MAPPING = ("198.51.100.20", 40000)


def device(rx: int, tx: int) -> DeviceStatus:
    status = PeerStatus(PEER, MAPPING, latest_handshake=100.0, rx_bytes=rx, tx_bytes=tx)
    return DeviceStatus(peers={PEER: status})


def up_mesh() -> Mesh:
    mesh = Mesh(OWN)
    mesh.merge(api_list([RemotePeer(PEER, "nas", "10.77.0.3", (), MAPPING)]))
    mesh.plan(DeviceStatus(), 99.0)
    mesh.plan(device(rx=1000, tx=1000), 100.0)
    assert mesh.path(PEER) == "direct"
    return mesh


def test_unanswered_traffic_tells_the_rendezvous_once_and_not_too_often() -> None:
    mesh = up_mesh()
    assert not mesh.plan(device(rx=1000, tx=1500), 100.2).kick_rendezvous  # just sent
    assert not mesh.plan(device(rx=1000, tx=2000), 100.2 + STALL_S - 0.1).kick_rendezvous
    stalled = mesh.plan(device(rx=1000, tx=2500), 100.2 + STALL_S)
    assert stalled.kick_rendezvous
    assert any("no answer from nas for 1 s" in event for event in stalled.events)
    assert not mesh.plan(device(rx=1000, tx=3000), 101.5).kick_rendezvous  # kicked just now
    again = 100.2 + STALL_S + RENDEZVOUS_KICK_EVERY_S
    assert mesh.plan(device(rx=1000, tx=3500), again).kick_rendezvous


def test_answered_traffic_and_lone_keepalives_are_not_a_stall() -> None:
    mesh = up_mesh()
    for step in range(1, 10):  # a conversation: both counters grow
        assert not mesh.plan(device(rx=1000 + step, tx=1000 + step), 100 + step).kick_rendezvous
    mesh = up_mesh()
    assert not mesh.plan(device(rx=1000, tx=1032), 125.0).kick_rendezvous  # one keepalive
    assert not mesh.plan(device(rx=1000, tx=1032), 130.0).kick_rendezvous
