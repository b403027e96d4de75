"""A neighbour on the LAN that announces a peer's key at its own address and relays what comes
there to the peer's public mapping: the peer answers through it (authenticated: it is the
peer), so a live public path that tried the sighting would move there, say `lan`, and stay
while the neighbour drops the data (the outside review of 81323bf saw exactly that). A live
public path tries only a sighting at an endpoint the peer reported itself over the API, and
only behind our own public address: the neighbour's is neither, so the pair stays `direct`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.lab import Lab, NatType
from tests.lab.agents import MeshAgent, all_direct
from tests.lab.rendezvous import RendezvousServer
from tests.lab.wait import wait_until

pytestmark = pytest.mark.lab
HELPERS = Path(__file__).parent / "lab"


def test_a_neighbour_relaying_a_lan_try_cannot_hold_a_live_public_path(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(2)
    home = lab.add_nat("home", NatType.PORT_RESTRICTED)
    victim, neighbour = MeshAgent(home.add_host("victim"), "victim"), home.add_host("neighbour")
    # A server with a public address (or behind a NAT that filters by address alone): what
    # comes from the neighbour's own mapping on the home NAT reaches it.
    friend = MeshAgent(lab.add_public_host("friend"), "friend")
    victim.start(token)
    friend.start(token)
    assert wait_until(lambda: all_direct([victim, friend]), 30), victim.output()
    status = victim.status()
    assert status is not None
    [peer] = status["peers"]
    mapping_host, mapping_port = peer["endpoint"].rsplit(":", 1)
    # The pair is in use: what goes through the neighbour is answered within the try.
    victim.host.spawn("ping", ["ping", "-n", "-i", "0.2", friend.address()])
    flag = neighbour.dir / "drop"
    relay = [
        sys.executable,
        str(HELPERS / "lan_proxy.py"),
        str(neighbour.address),
        "51820",
        mapping_host,
        mapping_port,
    ]
    relaying = neighbour.spawn("lan-proxy", [*relay, str(flag)])
    assert wait_until(lambda: "relaying" in relaying.output(), 10), relaying.output()
    spoofer = [sys.executable, str(HELPERS / "mdns_spoofer.py"), str(neighbour.address)]
    spoofing = neighbour.spawn(
        "mdns-spoofer", [*spoofer, peer["public_key"], str(neighbour.address), "1"]
    )
    assert wait_until(lambda: "announced" in spoofing.output(), 30), spoofing.output()

    def held() -> bool:
        status = victim.status()
        return status is not None and status["peers"][0]["endpoint"] == f"{neighbour.address}:51820"

    # On 81323bf (a live public path tried sightings) the victim went to the neighbour within
    # seconds, said `lan`, and lost every ping once the neighbour dropped the data. Now a live
    # public path is pointed only at a sighting the peer reported, behind our public address.
    flag.touch()  # the neighbour drops what it would relay
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        assert not held() and victim.paths() == {"friend": "direct"}, victim.output()
        time.sleep(0.25)
    assert victim.host.ping(friend.address()), victim.output()
