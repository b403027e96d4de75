"""The API's JSON decoded once into typed values (api_decode.py), every source merged through
Mesh.merge, and one plan that carries the peers, the routes and the status document."""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

import pytest

from meshpeer.common.limits import MAX_ROUTES
from meshpeer.peer.api_decode import (
    MAX_EPOCH_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PEERS,
    pending_routes,
    remote_peer,
    watch_answer,
)
from meshpeer.peer.discovery import RemotePeer, sighted
from meshpeer.peer.mesh import Mesh
from meshpeer.peer.plan import Surroundings
from meshpeer.peer.routes import RouteTable
from meshpeer.peer.status import Identity, RendezvousState
from meshpeer.peer.timers import PATH_FRESH_S, REJECT_AFTER_TIME_S
from meshpeer.peer.uapi import DeviceStatus

KEY_A, KEY_B, OWN = (bytes([n]) * 32 for n in (1, 2, 9))
OUR_LAN = ipaddress.IPv4Interface("192.168.1.2/24")


def item(key: bytes, **change: Any) -> dict[str, Any]:
    return {
        "public_key": base64.b64encode(key).decode(),
        "name": "a",
        "address": "10.77.0.2",
        "endpoint": "203.0.113.7:40000",
        "routes": ["10.1.0.0/24"],
        **change,
    }


def answer(peers: list[Any], removed: list[Any] | None = None, full: bool = True) -> dict[str, Any]:
    return {"epoch": "e1", "revision": 7, "full": full, "peers": peers, "removed": removed or []}


def test_a_watch_answer_is_decoded_once_into_peers_and_malformed_items_are_skipped() -> None:
    decoded = watch_answer(
        answer([item(KEY_A), item(OWN, endpoint="198.51.100.1:5"), "junk", item(KEY_B, name=7)])
    )
    assert [p.public_key for p in decoded.peers] == [KEY_A, OWN, KEY_B]
    assert decoded.peers[0] == RemotePeer(
        KEY_A, "a", "10.77.0.2", ("10.1.0.0/24",), ("203.0.113.7", 40000)
    )
    assert decoded.endpoint_of(OWN) == ("198.51.100.1", 5)
    assert decoded.endpoint_of(bytes(32)) is None
    delta = watch_answer(answer([], [base64.b64encode(KEY_A).decode(), "x", 5], full=False))
    assert delta.removed == (KEY_A,)  # a malformed key is skipped, not a failed loop


def test_every_list_and_string_of_a_watch_answer_is_bounded() -> None:
    with pytest.raises(ValueError, match="more than"):
        watch_answer(answer([{}] * (MAX_PEERS + 1)))
    with pytest.raises(ValueError, match="more than"):
        watch_answer(answer([], ["x"] * (MAX_PEERS + 1), full=False))
    assert len(watch_answer({**answer([]), "epoch": "e" * 1000}).epoch) == MAX_EPOCH_LENGTH
    routes = [f"10.{n}.0.0/16" for n in range(MAX_ROUTES + 1)]
    assert remote_peer(item(KEY_A, routes=routes[:MAX_ROUTES])) is not None
    assert remote_peer(item(KEY_A, routes=routes)) is None
    assert remote_peer(item(KEY_A, name="n" * MAX_NAME_LENGTH)) is not None
    assert remote_peer(item(KEY_A, name="n" * (MAX_NAME_LENGTH + 1))) is None
    assert pending_routes({"peer": {"pending_routes": ["10.0.0.0/8"] * 100}}) == ("10.0.0.0/8",) * 8
    assert pending_routes({"peer": "junk"}) == ()


def test_a_peer_s_lan_endpoints_are_decoded_bounded_and_checked() -> None:
    """What the API lists of a peer's LAN endpoints decides which sightings a live path may
    try: checked as the rendezvous checks them, and a peer listed with anything else is
    skipped, as one with a malformed route is."""
    listed = remote_peer(item(KEY_A, lan_endpoints=["192.168.1.5:51820", "10.0.0.7:51820"]))
    assert listed is not None
    assert listed.lan_endpoints == (("192.168.1.5", 51820), ("10.0.0.7", 51820))
    assert remote_peer(item(KEY_A)).lan_endpoints == ()  # type: ignore[union-attr]
    for bad in (
        ["192.168.1.5:51820", "192.168.1.6:51820", "192.168.1.7:51820"],
        ["127.0.0.1:51820"],
        ["224.0.0.251:5353"],
        ["169.254.0.9:51820"],
        ["[fe80::1%eth0]:51820"],
        ["192.168.1.5:51820\nallowed_ip=0.0.0.0/0"],
        "192.168.1.5:51820",
        [7],
    ):
        assert remote_peer(item(KEY_A, lan_endpoints=bad)) is None, bad


def test_every_source_merges_through_one_method_and_keeps_its_name() -> None:
    mesh = Mesh(OWN)
    mesh.set_own_lan([OUR_LAN])
    mesh.merge(sighted("lan", {KEY_A: [("192.168.1.5", 51820)]}))  # before the API lists it
    reported = item(KEY_A, lan_endpoints=["192.168.1.5:51820"])
    mesh.merge(watch_answer(answer([reported, item(OWN)])).discovery())
    assert set(mesh.peers) == {KEY_A}  # never ourselves
    mesh.merge(sighted("dns-sd", {KEY_A: [("198.51.100.1", 5)], KEY_B: [("198.51.100.2", 5)]}))
    [peer] = mesh.peers.values()
    assert [(c.endpoint, c.source) for c in mesh.candidates(peer)] == [
        (("192.168.1.5", 51820), "lan"),
        (("203.0.113.7", 40000), "api"),
        (("198.51.100.1", 5), "dns-sd"),
    ]
    assert set(mesh.peers) == {KEY_A}  # a hint adds no peer
    removal = answer([], [base64.b64encode(KEY_A).decode()], full=False)
    mesh.merge(watch_answer(removal).discovery())
    assert mesh.peers == {}


def test_the_plan_carries_the_peers_the_routes_and_the_status_document() -> None:
    mesh = Mesh(OWN, accept_routes=True)
    mesh.merge(watch_answer(answer([item(KEY_A)])).discovery())
    assert mesh.wants_route_table()
    rendezvous = RendezvousState("https://203.0.113.2:51821", own_endpoint="198.51.100.9:1")
    surroundings = Surroundings(
        Identity("me", "10.77.0.9", "wg0", "userspace", None),
        rendezvous,
        ipaddress.ip_network("10.77.0.0/16"),
        frozenset({ipaddress.ip_address("203.0.113.2")}),
        RouteTable((), frozenset({"10.9.0.0/24"}), (), ()),
    )
    plan = mesh.plan(DeviceStatus(), 100.0, surroundings)
    [config] = plan.set_peers
    assert config.allowed_ips == ("10.77.0.2/32", "10.1.0.0/24")
    assert plan.routes.wanted == {"10.1.0.0/24"} and plan.routes.changes
    assert plan.routes.owned == frozenset({"10.9.0.0/24"})  # ours, no longer wanted: removed
    assert plan.status is not None and plan.status["endpoint"] == "198.51.100.9:1"
    assert [p["name"] for p in plan.status["peers"]] == ["a"]
    assert mesh.plan(DeviceStatus(), 101.0).status is None  # without surroundings: paths only


def test_path_freshness_is_wireguards_reject_after_time() -> None:
    assert PATH_FRESH_S == REJECT_AFTER_TIME_S == 180.0
