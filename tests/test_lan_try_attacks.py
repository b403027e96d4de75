"""An outside review of a LAN try that is set again after WireGuard roamed back from it
(peer/paths.py): what a dead LAN endpoint, sighted by anyone, and the peer's own traffic on
the public path can make of it. (Its review of mDNS names resolved again is in
test_lan_discovery.py.)"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshpeer.peer.discovery import sighted
from meshpeer.peer.timers import DIRECT_TRY_S, LAN_TRY_EVERY_S

from .test_lan_upgrade import OWN_PUBLIC_SAME_NAT, PEER, PEER_LAN, PUBLIC, public_path_mesh


def test_a_packet_on_the_public_path_is_no_answer_from_a_lan_try_set_again() -> None:
    # Behind one NAT, the peer reported a LAN endpoint that does not work from here (another
    # VLAN, or a neighbour that took its address on ours, sighted by anyone). One packet of
    # the peer's on the public path during the try roams WireGuard back; the try is set again,
    # and that packet's bytes were counted as the LAN's answer: a second kick at once, and at
    # the try's end the dead LAN was kept ("it answered"), the path `lan`, until our traffic
    # stalled or the peer sent again (an idle pair: up to its next keepalive, 25 s).
    mesh, wire = public_path_mesh(OWN_PUBLIC_SAME_NAT, (PEER_LAN,))
    mesh.merge(sighted("lan", {PEER: [PEER_LAN]}))
    wire.apply(mesh, 102.0)
    assert wire.endpoint == PEER_LAN
    wire.endpoint, wire.rx = PUBLIC, wire.rx + 100  # a ping's reply, on the public path
    kicks = 0
    for tick in range(1, 4 * int(DIRECT_TRY_S) + 1):  # the rest of the try, and its end
        for config in mesh.plan(wire.status(), 102.0 + tick / 4).set_peers:
            kicks += config.kick and config.endpoint == PEER_LAN
            wire.endpoint = config.endpoint or wire.endpoint
    assert kicks == 1, kicks  # the try set again, once: nothing came from the LAN
    assert wire.endpoint == PUBLIC and mesh.path(PEER) == "direct"


@given(st.lists(st.booleans(), min_size=4 * 180, max_size=4 * 180))
@settings(max_examples=50, deadline=None)
def test_a_dead_lan_endpoint_holds_a_live_public_path_at_most_one_try_a_minute(
    sends: list[bool],
) -> None:
    # test_lan_upgrade's property test runs a pair whose peer is not behind our NAT, where no
    # LAN try ever starts (paths.lan_to_try): it cannot see the tries. Here the peer is behind
    # our NAT, its reported LAN endpoint is sighted and dead, and it sends on the public path
    # at any quarter second (WireGuard roams back there). Each try costs DIRECT_TRY_S and the
    # round that notices, once a minute.
    mesh, wire = public_path_mesh(OWN_PUBLIC_SAME_NAT, (PEER_LAN,))
    mesh.merge(sighted("lan", {PEER: [PEER_LAN]}))
    off: list[float] = []
    for tick, peer_sends in enumerate(sends):
        now = 102.0 + tick / 4
        wire.handshake = 100.5 + 120 * ((now - 100) // 120)  # WireGuard rekeys
        wire.apply(mesh, now)
        if peer_sends:
            wire.endpoint, wire.rx = PUBLIC, wire.rx + 100
        if wire.endpoint != PUBLIC:
            off.append(now)
    for start in off:
        window = [at for at in off if start <= at < start + LAN_TRY_EVERY_S]
        assert len(window) <= 4 * (DIRECT_TRY_S + 1), (start, window)
