"""A live public path moves to the LAN when the peer is sighted there (issue 17, item 3): two
hosts behind one hairpinning NAT, their mDNS held back at first, go direct through the NAT's
public address; once mDNS passes, each sights the other at the LAN endpoint it reported to the
rendezvous (PUT /v1/lan), both behind one public address, and both move to `lan` without
restarting anything and without their ping stopping for more than a moment."""

from __future__ import annotations

import itertools
import re
import time

import pytest

from tests.lab import Lab, NatType
from tests.lab.agents import MeshAgent
from tests.lab.mdns import hold_mdns
from tests.lab.netns import run
from tests.lab.rendezvous import RendezvousServer
from tests.lab.topology import Host, Router
from tests.lab.wait import wait_until

pytestmark = pytest.mark.lab

# zeroconf's browser asks again at growing intervals (1, 2, 4 ... s): the sighting after mDNS
# opens comes with its next question, which the announcements held back make the first chance.
ON_LAN_S = 30.0
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from", re.MULTILINE)
# A LAN try points one side at the LAN for up to DIRECT_TRY_S (2 s) before it is answered or
# goes back; the ping (every 0.1 s) may miss that much, not more.
LONGEST_GAP_S = 3.0


def test_a_public_path_moves_to_the_lan_when_the_sightings_arrive(lab: Lab) -> None:
    server, _, hosts, agents = _hairpinned_pair(lab, hold_hairpin=False)
    pairs = list(zip(agents, ("pc1", "pc0"), strict=True))
    assert wait_until(lambda: all(a.paths() == {o: "direct"} for a, o in pairs), 30), [
        agent.paths() for agent in agents
    ]
    reported = [f"{host.address}:51820" for host in hosts]
    assert wait_until(lambda: _listed_lan(server) == reported, 10), server.peers()
    first, second = agents
    pinger = first.host.spawn(
        "ping", ["ping", "-D", "-n", "-i", "0.1", "-W", "1", second.address()]
    )
    assert wait_until(lambda: "bytes from" in pinger.output(), 5), pinger.output()

    opened = time.time()
    for host in hosts:
        hold_mdns(host, False)
    on_lan = wait_until(lambda: all(a.paths() == {o: "lan"} for a, o in pairs), ON_LAN_S)
    assert on_lan, ([agent.paths() for agent in agents], first.output(), second.output())
    assert "it is on our LAN" in first.output() + second.output()

    time.sleep(3.0)  # on the LAN to stay: no try of it goes back
    assert all(a.paths() == {o: "lan"} for a, o in pairs)
    stamps = [float(stamp) for stamp in REPLY.findall(pinger.output())]
    after = [stamp for stamp in stamps if stamp > opened]
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert after and max(gaps) < LONGEST_GAP_S, max(gaps, default=None)


def test_a_pair_that_came_back_from_the_relay_still_moves_to_the_lan(lab: Lab) -> None:
    """The same site, with the NAT's hairpin held back at first: the pair's punch fails, it goes
    through the relay, and comes back `direct` at the relay's first direct try once the hairpin
    works. A pair that got to `direct` that way must take the LAN as well when it appears."""
    _, site, hosts, agents = _hairpinned_pair(lab, hold_hairpin=True)
    pairs = list(zip(agents, ("pc1", "pc0"), strict=True))
    assert wait_until(lambda: all(a.paths() == {o: "relay"} for a, o in pairs), 30), [
        agent.paths() for agent in agents
    ]
    _hold_hairpin(site, False)
    # The relay's first direct try comes DIRECT_FIRST_TRY_S (10 s) after the pair relayed.
    assert wait_until(lambda: all(a.paths() == {o: "direct"} for a, o in pairs), 30), [
        agent.paths() for agent in agents
    ]
    for host in hosts:
        hold_mdns(host, False)
    on_lan = wait_until(lambda: all(a.paths() == {o: "lan"} for a, o in pairs), ON_LAN_S)
    first, second = agents
    assert on_lan, ([agent.paths() for agent in agents], first.output(), second.output())


def _hairpinned_pair(
    lab: Lab, *, hold_hairpin: bool
) -> tuple[RendezvousServer, Router, list[Host], list[MeshAgent]]:
    """A rendezvous, and two agents behind one hairpinning NAT with their mDNS held back (and
    the hairpin too, if asked), started."""
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(2)
    site = lab.add_nat("site", NatType.PORT_RESTRICTED, hairpin=True)
    hosts = [site.add_host(f"pc{n}") for n in (0, 1)]
    for host in hosts:
        hold_mdns(host, True)
    if hold_hairpin:
        _hold_hairpin(site, True)
    agents = [MeshAgent(host, host.name).start(token) for host in hosts]
    return server, site, hosts, agents


def _hold_hairpin(site: Router, hold: bool) -> None:
    """Drop (or let through again) what the NAT would forward from its LAN back into it."""
    if hold:
        rules = "add table ip hold\n"
        rules += "add chain ip hold forward { type filter hook forward priority -10; }\n"
        rules += 'add rule ip hold forward iifname "lan" oifname "lan" drop\n'
    else:
        rules = "delete table ip hold\n"
    run(["ip", "netns", "exec", site.ns, "nft", "-f", "-"], stdin=rules)


def _listed_lan(server: RendezvousServer) -> list[str]:
    """Each peer's reported LAN endpoints as the rendezvous lists them, by name."""
    by_name = server.peers()
    return [endpoint for name in ("pc0", "pc1") for endpoint in by_name[name]["lan_endpoints"]]
