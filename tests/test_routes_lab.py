"""Issue 12 replayed in the lab: a peer that advertises the internet and its victim's LAN.

Every agent used to `ip route replace` whatever any peer advertised: the victim's internet
traffic and its own LAN went into the tunnel, and once the peer was removed its LAN route and
IPv6 default route were gone. Traffic here goes only to lab namespaces; `ip route get` looks
addresses up without sending anything.
"""

from __future__ import annotations

import time

import pytest

from meshpeer.peer.links import RTPROT_MESHPEER
from meshpeer.peer.routes import NOT_ACCEPTED
from tests.lab import Host, Lab, NatType
from tests.lab.agents import MeshAgent, all_direct, join_with_routes
from tests.lab.rendezvous import RendezvousServer
from tests.lab.wait import wait_until

pytestmark = pytest.mark.lab

ELSEWHERE = "203.0.113.200"  # in the lab's internet, nobody there: only ever looked up
ELSEWHERE_V6 = "2001:db8:ffff::1"
HARMLESS = "10.99.0.0/24"  # what a peer may well carry: installed, so the test is not vacuous


def routing_view(host: Host, lan: str, neighbour: str, rendezvous: str) -> dict[str, str]:
    """What the attack changed: the LAN and default routes, and where addresses go."""
    commands = {
        "LAN route": ["ip", "-4", "route", "show", "table", "main", "exact", lan],
        "default route": ["ip", "-4", "route", "show", "table", "main", "exact", "0.0.0.0/0"],
        "IPv6 default route": ["ip", "-6", "route", "show", "table", "main", "exact", "::/0"],
        "a host on the LAN": ["ip", "route", "get", neighbour],
        "the rendezvous": ["ip", "route", "get", rendezvous],
        "the internet": ["ip", "route", "get", ELSEWHERE],
        "the IPv6 internet": ["ip", "-6", "route", "get", ELSEWHERE_V6],
    }
    view = {}
    for what, command in commands.items():
        result = host.run(command, check=False)  # "Network is unreachable" is an answer too
        view[what] = (result.stdout + result.stderr).strip()
    return view


def routes_of_ours(host: Host) -> str:
    return host.run(["ip", "route", "show", "table", "all", "proto", str(RTPROT_MESHPEER)]).stdout


def give_ipv6_default(host: Host) -> None:
    """The lab is IPv4; the victim gets an IPv6 prefix and default route for ::/0 to aim at."""
    host.run(["ip", "-6", "addr", "add", "2001:db8:1::2/64", "dev", "eth0", "nodad"])
    host.run(["ip", "-6", "route", "add", "default", "via", "2001:db8:1::1", "dev", "eth0"])


def test_a_peer_advertising_the_internet_and_the_victims_lan_hijacks_nothing(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    rendezvous = str(server.host.address)
    home = lab.add_nat("home", NatType.PORT_RESTRICTED)
    victim_host, neighbour = home.add_host("victim"), home.add_host("neighbour")
    give_ipv6_default(victim_host)
    lan = str(home.lan.network)
    before = routing_view(victim_host, lan, str(neighbour.address), rendezvous)
    assert before["LAN route"] and before["default route"] and before["IPv6 default route"]

    victim = MeshAgent(victim_host, "victim").start(server.token(), "--accept-routes")
    attack = ["128.0.0.0/1", "64.0.0.0/2", lan, "::/0"]
    mallory_host = lab.add_nat("evil", NatType.PORT_RESTRICTED).add_host("mallory")
    # A token holder asking for them is refused outright by the rendezvous (one line, exit 2)...
    greedy = join_with_routes(server, mallory_host, "mallory", [*attack, HARMLESS], grant=False)
    assert wait_until(lambda: greedy.process is not None and not greedy.process.running(), 15)
    assert "overlaps link-local space" in greedy.output(), greedy.output()
    assert greedy.process is not None and greedy.process.popen.returncode == 2
    # ...so the rest is defence in depth: a compromised rendezvous publishes them anyway.
    join_with_routes(
        server, lab.add_nat("evil2", NatType.PORT_RESTRICTED).add_host("m"), "mallory", [HARMLESS]
    )
    assert wait_until(lambda: "mallory" in victim.paths(), 30), victim.output()
    server.impose_routes("mallory", [*attack, HARMLESS])
    installed = ["ip", "route", "show", "exact", HARMLESS]
    assert wait_until(lambda: "dev wg0" in victim_host.run(installed).stdout, 10), victim.output()
    time.sleep(3)  # a few reconcile rounds: a refusal must not be logged again each one

    during = routing_view(victim_host, lan, str(neighbour.address), rendezvous)
    assert during == before
    [ours] = routes_of_ours(victim_host).splitlines()
    assert ours.startswith(f"{HARMLESS} dev wg0"), ours
    assert victim_host.ping(neighbour.address), "the victim lost its own LAN"
    assert victim_host.ping(rendezvous), "the victim's way to the rendezvous went elsewhere"
    for route in attack:
        refused = f"not installing {route} from peer mallory"
        assert victim.output().count(refused) == 1, (route, victim.output())

    server.cli("peer", "remove", "mallory")
    gone = wait_until(
        lambda: "mallory" not in victim.paths() and not routes_of_ours(victim_host), 15
    )
    after = routing_view(victim_host, lan, str(neighbour.address), rendezvous)
    assert after == before
    assert gone, victim.output()


def test_without_accept_routes_an_agent_installs_no_peers_route_at_all(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    rendezvous = str(server.host.address)
    home = lab.add_nat("home", NatType.PORT_RESTRICTED)
    laptop_host, neighbour = home.add_host("laptop"), home.add_host("neighbour")
    office = lab.add_nat("office", NatType.PORT_RESTRICTED)
    office_lan = str(office.lan.network)
    printer = office.add_host("printer")
    lan = str(home.lan.network)
    before = routing_view(laptop_host, lan, str(neighbour.address), rendezvous)

    laptop = MeshAgent(laptop_host, "laptop").start(server.token())
    gateway = join_with_routes(server, office.add_host("gateway"), "gateway", [office_lan])
    assert wait_until(lambda: all_direct([laptop, gateway]), 30), laptop.output()
    to_printer = ["ip", "route", "get", str(printer.address)]
    # Given time to (wrongly) install it: a few reconcile rounds.
    assert not wait_until(lambda: "dev wg0" in laptop_host.run(to_printer).stdout, 4)

    for family, only in (("-4", {"10.77.0.0/16"}), ("-6", {"fe80::/64"})):
        on_wg0 = laptop_host.run(["ip", family, "route", "show", "table", "main", "dev", "wg0"])
        assert {line.split()[0] for line in on_wg0.stdout.splitlines()} <= only, on_wg0.stdout
    assert routes_of_ours(laptop_host) == ""
    [peer] = laptop.status()["peers"]  # type: ignore[index]
    allowed = laptop_host.run(["wg", "show", "wg0", "allowed-ips"]).stdout
    assert f"{peer['public_key']}\t{peer['address']}/32\n" in allowed, allowed
    assert routing_view(laptop_host, lan, str(neighbour.address), rendezvous) == before
    assert laptop.output().count(f"not installing {office_lan} from peer gateway") == 1
    assert NOT_ACCEPTED in laptop.output()
