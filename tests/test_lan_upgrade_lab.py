"""A live public path moves to the LAN when the peer is sighted there (issue 17): two hosts
behind one hairpinning NAT, their mDNS held back at first, go direct through the NAT's public
address, then move to `lan` once mDNS passes and the sightings arrive, without restarting
anything and without their ping stopping for more than a moment."""

from __future__ import annotations

import itertools
import re
import time

import pytest

from tests.lab import Host, Lab, NatType
from tests.lab.agents import MeshAgent
from tests.lab.rendezvous import RendezvousServer
from tests.lab.wait import wait_until

pytestmark = pytest.mark.lab

MDNS = ["-p", "udp", "--dport", "5353", "-j", "DROP"]
# zeroconf's browser asks again at growing intervals (1, 2, 4 ... s): the sighting after mDNS
# opens comes with its next question, up to ~30 s later.
SIGHTING_S = 45.0
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from", re.MULTILINE)


def hold_mdns(host: Host, hold: bool) -> None:
    action = "-A" if hold else "-D"
    for chain in ("INPUT", "OUTPUT"):
        host.run(["iptables", action, chain, *MDNS])


def test_a_public_path_moves_to_the_lan_when_the_sightings_arrive(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(2)
    site = lab.add_nat("site", NatType.PORT_RESTRICTED, hairpin=True)
    hosts = [site.add_host(f"pc{n}") for n in (0, 1)]
    for host in hosts:
        hold_mdns(host, True)
    agents = [MeshAgent(host, host.name) for host in hosts]
    for agent in agents:
        agent.start(token)
    pairs = list(zip(agents, ("pc1", "pc0"), strict=True))
    assert wait_until(lambda: all(a.paths() == {o: "direct"} for a, o in pairs), 30), [
        agent.paths() for agent in agents
    ]
    first, second = agents
    pinger = first.host.spawn(
        "ping", ["ping", "-D", "-n", "-i", "0.1", "-W", "1", second.address()]
    )
    assert wait_until(lambda: "bytes from" in pinger.output(), 5), pinger.output()

    opened = time.time()
    for host in hosts:
        hold_mdns(host, False)
    on_lan = wait_until(lambda: all(a.paths() == {o: "lan"} for a, o in pairs), SIGHTING_S)
    assert on_lan, ([agent.paths() for agent in agents], first.output(), second.output())
    assert "it is on our LAN" in first.output() + second.output()

    # The ping went on through the move: no gap longer than a LAN try's 2 s.
    time.sleep(1.0)
    stamps = [float(stamp) for stamp in REPLY.findall(pinger.output())]
    after = [stamp for stamp in stamps if stamp > opened]
    assert after and max(b - a for a, b in itertools.pairwise(after)) < 2.5
