"""Asking mDNS again for a peer that should be on our LAN (neighbours.py): who counts, and when
the questions go. The lab test `test_a_pair_that_came_back_from_the_relay_still_moves_to_the_lan`
shows why: zeroconf's browser stops asking 14 s after it starts."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from meshpeer.common.endpoints import Endpoint
from meshpeer.peer.discovery import RemotePeer, api_list, sighted
from meshpeer.peer.mesh import Mesh
from meshpeer.peer.neighbours import Asking, unsighted
from meshpeer.peer.timers import MDNS_ASK_FIRST_S, MDNS_ASK_MAX_S

OWN, PEER, FAR = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32
OUR_LAN = ipaddress.IPv4Interface("192.168.7.2/24")
OUR_PUBLIC: Endpoint = ("198.51.100.20", 40000)
ITS_LAN: Endpoint = ("192.168.7.3", 51820)


def mesh_with(peer: RemotePeer, own_public: Endpoint | None = OUR_PUBLIC) -> Mesh:
    mesh = Mesh(OWN)
    me = RemotePeer(OWN, "me", "10.77.0.2", (), own_public)
    mesh.merge(api_list([me, peer]))
    mesh.set_own_lan([OUR_LAN])
    return mesh


def neighbour(
    endpoint: Endpoint | None = ("198.51.100.20", 41000), **changes: object
) -> RemotePeer:
    fields: dict[str, object] = {"lan_endpoints": (ITS_LAN,)} | changes
    return RemotePeer(PEER, "nas", "10.77.0.3", (), endpoint, **fields)  # type: ignore[arg-type]


def test_a_peer_behind_our_address_that_reported_our_subnet_is_wanted_until_sighted() -> None:
    mesh = mesh_with(neighbour())
    assert unsighted(mesh) == {PEER}
    mesh.merge(sighted("lan", {PEER: [ITS_LAN]}))
    assert unsighted(mesh) == frozenset()


@pytest.mark.parametrize(
    "peer",
    [
        neighbour(("203.0.113.9", 41000)),  # behind another public address
        neighbour(lan_endpoints=(("192.168.8.3", 51820),)),  # reported another subnet
        neighbour(lan_endpoints=()),  # reported nothing
        neighbour(None),  # no mapping yet
    ],
    ids=["elsewhere", "other-subnet", "no-report", "no-mapping"],
)
def test_a_peer_that_cannot_be_on_our_lan_is_not_asked_for(peer: RemotePeer) -> None:
    assert unsighted(mesh_with(peer)) == frozenset()


def test_nobody_is_wanted_before_the_rendezvous_told_us_our_address() -> None:
    assert unsighted(mesh_with(neighbour(), own_public=None)) == frozenset()


def test_a_sighting_the_peer_never_reported_does_not_count() -> None:
    mesh = mesh_with(neighbour())
    mesh.merge(sighted("lan", {PEER: [("192.168.7.66", 51820)]}))
    assert unsighted(mesh) == {PEER}


def asks(asking: Asking, wanted: frozenset[bytes], seconds: range) -> list[int]:
    return [second for second in seconds if asking.due(wanted, float(second))]


def test_questions_go_at_doubling_intervals_while_a_peer_is_wanted() -> None:
    first = int(MDNS_ASK_FIRST_S)
    assert asks(Asking(), frozenset({PEER}), range(100)) == [
        first,
        first + 2,
        first + 2 + 4,
        first + 2 + 4 + 8,
        first + 2 + 4 + 8 + 16,
        first + 2 + 4 + 8 + 16 + 32,
    ]


def test_the_interval_stops_at_an_hour() -> None:
    asking = Asking()
    seconds = range(0, 6 * 3600, 10)
    times = asks(asking, frozenset({PEER}), seconds)
    assert max(b - a for a, b in itertools.pairwise(times)) <= MDNS_ASK_MAX_S
    assert times[-1] - times[-2] == MDNS_ASK_MAX_S


def test_another_wanted_peer_starts_the_series_again() -> None:
    asking = Asking()
    assert asks(asking, frozenset({PEER}), range(0, 60)) == [2, 4, 8, 16, 32]
    # Next would be at 64; a second peer appears at 60: asked for 2 s later.
    assert asks(asking, frozenset({PEER, FAR}), range(60, 70)) == [62, 64, 68]


def test_a_peer_that_leaves_the_list_and_comes_back_keeps_its_series() -> None:
    asking = Asking()
    asks(asking, frozenset({PEER}), range(0, 40))  # asked at 2, 4, 8, 16, 32; next at 64
    assert asks(asking, frozenset(), range(40, 60)) == []
    assert asks(asking, frozenset({PEER}), range(60, 130)) == [64, 128]


def test_a_list_that_flips_its_peers_does_not_reset_their_series() -> None:
    """The review of the first version: swapping two peers each round kept it asking every
    2 s for an hour (1,799 questions), and listing and unlisting one each round asked never."""
    hour = range(3600)
    steady = len(asks(Asking(), frozenset({PEER}), hour))
    swapping = Asking()
    swaps = [s for s in hour if swapping.due(frozenset({(PEER, FAR)[s % 2]}), float(s))]
    flipping = Asking()
    flips = [s for s in hour if flipping.due(frozenset({PEER} if s % 2 else ()), float(s))]
    assert len(swaps) <= 2 * steady + 2
    assert 0 < len(flips) <= steady + 1


def test_a_churning_list_never_buys_more_than_one_question_per_first_interval() -> None:
    """A hostile API listing a new peer behind our address every round, each for 3 s: each
    new peer gets its first question, but never two questions closer than MDNS_ASK_FIRST_S."""
    asking = Asking()

    def keys(second: int) -> frozenset[bytes]:
        return frozenset(n.to_bytes(32, "big") for n in range(max(0, second - 2), second + 1))

    times = [second for second in range(1000) if asking.due(keys(second), float(second))]
    assert len(times) > 100
    assert min(b - a for a, b in itertools.pairwise(times)) >= MDNS_ASK_FIRST_S
