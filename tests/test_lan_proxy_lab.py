"""A neighbour on the LAN that announces a peer's key at its own address and relays what comes
there to the peer's public mapping: a live public path tries the sighting, the peer answers
through the relay (authenticated: it is the peer), and the path moves there, says `lan`, and
stays while the neighbour drops the data and passes the handshakes on."""

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


@pytest.mark.xfail(strict=True, reason="not fixed: a LAN try relayed by a neighbour is kept")
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

    # `lan`, though it is the internet, through the neighbour:
    assert wait_until(lambda: held() and victim.paths() == {"friend": "lan"}, 60), victim.output()
    time.sleep(5.0)
    assert held() and victim.paths() == {"friend": "lan"}, victim.output()  # kept
    flag.touch()
    time.sleep(3.0)
    # What the README claims: 2 s of the public path a minute, at most.
    assert wait_until(lambda: victim.host.ping(friend.address()), 60), (
        victim.paths(),
        victim.output(),
    )
