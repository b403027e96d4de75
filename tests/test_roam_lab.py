"""A laptop carried from one network to another (issue 17): its link goes, and comes back on
another NAT's LAN with a new address and gateway, while `meshpeer run` keeps running. The agent
follows the change through netlink, sets every endpoint again (the rendezvous's first, so that
its new mapping is published at once) and moves mDNS to the new address; every peer pings it
again. bench/convergence.py measures how long it takes; the bound here is loose so that it does
not flake on a busy machine."""

from __future__ import annotations

import time

import pytest

from meshpeer.peer.timers import RELAY_AFTER_S
from tests.lab import Lab, NatType
from tests.lab.agents import MeshAgent, all_direct
from tests.lab.rendezvous import RendezvousServer
from tests.lab.wait import wait_until

pytestmark = pytest.mark.lab

# Before the agent followed netlink, a moved host reached no peer in 60 s: wireguard-go kept
# sending from the old source address until something set its endpoints again.
ROAM_BOUND_S = 20.0


def mesh_at_home(lab: Lab) -> tuple[MeshAgent, list[MeshAgent]]:
    """A laptop at home, an office box and a cloud VM: all pairs direct, pinging."""
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(3)
    home = lab.add_nat("home", NatType.PORT_RESTRICTED)
    office = lab.add_nat("office", NatType.PORT_RESTRICTED)
    laptop = MeshAgent(home.add_host("laptop"), "laptop")
    peers = [MeshAgent(office.add_host("officebox"), "officebox")]
    peers.append(MeshAgent(lab.add_public_host("cloud"), "cloud"))
    agents = [laptop, *peers]
    for agent in agents:
        agent.start(token)
    assert wait_until(lambda: all_direct(agents), 30), [a.paths() for a in agents]
    return laptop, peers


def pings_every_peer(laptop: MeshAgent, peers: list[MeshAgent]) -> None:
    for peer in peers:
        address = peer.address()

        def answers(address: str = address) -> bool:
            return laptop.host.ping(address)

        assert wait_until(answers, ROAM_BOUND_S), f"{peer.name} unreachable:\n{laptop.output()}"


def test_a_host_moved_to_another_nat_reaches_every_peer_again(lab: Lab) -> None:
    laptop, peers = mesh_at_home(lab)
    cafe = lab.add_nat("cafe", NatType.PORT_RESTRICTED)
    old_address = laptop.host.address

    laptop.host.move_to(cafe)

    assert laptop.host.address != old_address
    pings_every_peer(laptop, peers)
    agents = [laptop, *peers]
    assert wait_until(lambda: all_direct(agents), 10), [a.paths() for a in agents]
    status = laptop.status()
    assert status is not None
    assert status["endpoint"].startswith(f"{cafe.public_address}:"), status
    assert f"mDNS: announcing _wireguard._udp.local. on {laptop.host.address}" in laptop.output()
    assert "Traceback" not in laptop.output()  # zeroconf's socket errors are one line


def test_a_host_moved_behind_a_symmetric_nat_goes_through_the_relay_where_it_must(
    lab: Lab,
) -> None:
    """A hotel's symmetric NAT: the office box's port-restricted NAT never lets it in, so that
    pair goes through the relay (RFC 4787, README's table); the cloud VM stays direct."""
    laptop, peers = mesh_at_home(lab)
    hotel = lab.add_nat("hotel", NatType.SYMMETRIC)

    laptop.host.move_to(hotel)

    pings_every_peer(laptop, peers)
    expected = {"officebox": "relay", "cloud": "direct"}
    assert wait_until(lambda: laptop.paths() == expected, 10), laptop.paths()


def test_a_new_local_interface_is_not_a_move(lab: Lab) -> None:
    """docker0, a VPN's tun0, a bridge for VMs: an address on a link that carries no default
    route is not a new network. Taken for a move, it sent every idle pair to the relay: a
    keepalive is not answered, so nothing came back from the peers, whose view of us had not
    changed."""
    laptop, _ = mesh_at_home(lab)
    bridge = ["ip", "link", "add", "docker0", "type", "bridge"]
    laptop.host.run(bridge)
    laptop.host.run(["ip", "addr", "add", "172.17.0.1/16", "dev", "docker0"])
    laptop.host.run(["ip", "link", "set", "docker0", "up"])
    time.sleep(RELAY_AFTER_S + 3)
    assert "network changed" not in laptop.output()
    assert laptop.paths() == {"officebox": "direct", "cloud": "direct"}
