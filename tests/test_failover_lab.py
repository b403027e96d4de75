"""Two rendezvous on one PostgreSQL database (on a third public host), and agents that outlive
one of them (issue 18): five agents behind their own NATs; `kill -9` the rendezvous their
token named. Tunnels keep working; every agent moves to the other instance (its API,
WireGuard endpoint, relay and DNS) within a loose bound; a NAT mapping reset still heals; a
sixth peer joins through the survivor and reaches all; `dig` against the survivor shows every
peer; the killed one, restarted, catches up without losing or duplicating anything, and every
agent goes back to it (the first by URL), so that relayed pairs meet at one instance."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from tests.lab import Lab, NatType
from tests.lab.agents import MeshAgent, all_direct
from tests.lab.database import serve_postgres
from tests.lab.netns import run
from tests.lab.rendezvous import DNS_PORT, RendezvousServer
from tests.lab.topology import Host
from tests.lab.wait import wait_until
from tests.pgcluster import Cluster

pytestmark = pytest.mark.lab

# The watch fails at once against a killed process's port; the agent moves after
# FAILOVER_AFTER_S (5 s) of failures, at its 4th try (about 7 s). Loose, for a busy machine.
MOVED_S = 30.0
SERVICE = "_wireguard._udp.mesh.internal"


def test_agents_move_to_the_surviving_rendezvous_after_kill_9(lab: Lab) -> None:
    # PostgreSQL on a public host of its own, reached over the lab's internet by both.
    database = serve_postgres(lab.add_public_host("db"))
    first = RendezvousServer(lab.add_public_host("rv1"), database=database).start()
    second = _second_instance(lab.add_public_host("rv2"), first, database)
    token = first.token(5)
    routers = [lab.add_nat(f"site{n}", NatType.PORT_RESTRICTED) for n in range(5)]
    agents = [MeshAgent(router.add_host(f"p{n}"), f"p{n}") for n, router in enumerate(routers)]
    for agent in agents:
        agent.start(token)
    assert wait_until(lambda: all_direct(agents), 60), [a.paths() for a in agents]
    # Each agent heard of the second instance from the first (join answer or watch).
    assert wait_until(lambda: all(_others(a) == [second.api_url] for a in agents), 20)
    pinger = agents[0].host.spawn("ping", ["ping", "-n", "-i", "0.2", agents[1].address()])

    first.kill()
    killed = time.time()
    replies = pinger.output().count("bytes from")
    assert wait_until(lambda: pinger.output().count("bytes from") > replies + 10, 10), (
        "a tunnel stopped with the rendezvous"
    )
    moved = wait_until(lambda: all(_uses(a) == (second.api_url, True) for a in agents), MOVED_S)
    assert moved, [(_uses(a), a.output()[-2000:]) for a in agents]
    print(f"all 5 agents on the second rendezvous {time.time() - killed:.1f} s after kill -9")
    assert all(f"moving to {second.api_url}" in a.output() for a in agents)

    # A NAT that forgets its mappings still heals: the survivor publishes the new mapping.
    pinger.stop()
    site0 = agents[0].host
    routers[0].reset_mappings()
    reset = time.time()
    assert wait_until(lambda: all(site0.ping(a.address()) for a in agents[1:]), 30), agents[
        0
    ].output()[-3000:]
    print(f"healed {time.time() - reset:.1f} s after the mapping reset")

    # A new peer joins through the survivor and reaches every one.
    late = MeshAgent(lab.add_nat("site5", NatType.PORT_RESTRICTED).add_host("p5"), "p5")
    late.start(second.token(1))
    everyone = [*agents, late]
    assert wait_until(lambda: all_direct(everyone), 60), [a.paths() for a in everyone]

    names = {agent.name for agent in everyone}
    assert _dig_names(site0, second, names) == names
    first.start()
    restarted = time.time()
    assert wait_until(lambda: _dig_names(site0, first, names) == names, 20)
    stored = first.peers()
    assert set(stored) == names
    assert len({peer["address"] for peer in stored.values()}) == len(names)
    # Back to the first by URL once it is listed live for FAILBACK_AFTER_S (30 s), at the next
    # watch answer (a long poll: up to 25 s more): every agent at one instance, one relay.
    back = wait_until(lambda: all(_uses(a) == (first.api_url, True) for a in everyone), 90)
    assert back, [(_uses(a), a.output()[-1500:]) for a in everyone]
    print(f"all 6 agents back on the first {time.time() - restarted:.1f} s after its restart")
    assert all_direct(everyone)


def test_a_symmetric_pair_joined_through_two_instances_meets_at_the_first_and_relays(
    lab: Lab, postgres_cluster: Cluster
) -> None:
    """Found by the compose profile's lab: two peers behind symmetric NATs, one joined through
    each instance, each asked its own instance for the relay and never connected (the relay
    matches a pair in one process). The one that joined through the second goes back to the
    first by URL, and the pair relays there."""
    database = asyncio.run(postgres_cluster.new_database())
    first = RendezvousServer(lab.add_public_host("rv1"), database=database).start()
    second = _second_instance(lab.add_public_host("rv2"), first, database)
    hosts = [lab.add_nat(f"sym{n}", NatType.SYMMETRIC).add_host(f"s{n}") for n in (0, 1)]
    agents = [
        MeshAgent(host, host.name).start(server.token(1))
        for host, server in zip(hosts, (first, second), strict=True)
    ]
    pairs = list(zip(agents, ("s1", "s0"), strict=True))
    # The second's agent is back on the first after FAILBACK_AFTER_S (30 s) and a watch answer.
    relayed = wait_until(lambda: all(a.paths() == {o: "relay"} for a, o in pairs), 90)
    assert relayed, [(a.paths(), _uses(a), a.output()[-1500:]) for a in agents]
    assert all(_uses(agent)[0] == first.api_url for agent in agents)
    assert hosts[0].ping(agents[1].address())


def test_agents_leave_a_rendezvous_host_that_went_silent(
    lab: Lab, postgres_cluster: Cluster
) -> None:
    """A host that is down, or cut off, answers nothing: no refusal, no reset. The watch's long
    poll held on for its whole 40 s before it failed, and each retry's connect as long; TCP
    keepalives and a connect timeout end them within about 11 and 5 s."""
    database = asyncio.run(postgres_cluster.new_database())
    first = RendezvousServer(lab.add_public_host("rv1"), database=database).start()
    second = _second_instance(lab.add_public_host("rv2"), first, database)
    token = first.token(2)
    agents = [
        MeshAgent(lab.add_nat(f"site{n}", NatType.PORT_RESTRICTED).add_host(f"p{n}"), f"p{n}")
        for n in (0, 1)
    ]
    for agent in agents:
        agent.start(token)
    assert wait_until(lambda: all_direct(agents), 30), [a.paths() for a in agents]
    assert wait_until(lambda: all(_others(a) == [second.api_url] for a in agents), 20)
    time.sleep(1.0)  # the watch's long poll is open again, idle

    _silence(first.host)
    silenced = time.time()
    moved = wait_until(lambda: all(_uses(a) == (second.api_url, True) for a in agents), 35)
    assert moved, [(_uses(a), a.output()[-1500:]) for a in agents]
    print(f"both agents on the second {time.time() - silenced:.1f} s after the first went silent")
    assert agents[0].host.ping(agents[1].address())


def _silence(host: Host) -> None:
    """Drop everything the host sends or receives: a machine switched off, or cut off."""
    rules = "add table inet silence\n"
    for hook in ("input", "output"):
        chain = f"type filter hook {hook} priority -300; policy drop;"
        rules += f"add chain inet silence {hook} {{ {chain} }}\n"
    run(["ip", "netns", "exec", host.ns, "nft", "-f", "-"], stdin=rules)


def _second_instance(host: Host, first: RendezvousServer, database: str) -> RendezvousServer:
    """Another instance on the same database, with the first's TLS certificate (agents pin
    it; the second refuses to start with another) and its own data folder."""
    second = RendezvousServer(host, database=database)
    second.data_dir.mkdir(parents=True)
    for name in ("tls.crt", "tls.key"):
        shutil.copy2(first.data_dir / name, second.data_dir / name)
    return second.start()


def _uses(agent: MeshAgent) -> tuple[str | None, bool]:
    status = agent.status() or {}
    rendezvous = status.get("rendezvous") or {}
    return rendezvous.get("url"), bool(rendezvous.get("answering"))


def _others(agent: MeshAgent) -> list[str]:
    status = agent.status() or {}
    return list((status.get("rendezvous") or {}).get("others") or [])


def _dig_names(host: Host, server: RendezvousServer, names: set[str]) -> set[str]:
    """Which of `names` an instance's DNS answers (each an A record in the zone), when its
    DNS-SD lists exactly as many instances as there are names (none twice, none left over)."""
    at = f"@{server.host.address}"

    def dig(*question: str) -> list[str]:
        command = ["dig", at, "-p", str(DNS_PORT), *question, "+short", "+time=1", "+tries=2"]
        return host.run(command, check=False).stdout.split()

    if len(dig(SERVICE, "PTR")) != len(names):
        return set()
    return {name for name in names if dig(f"{name}.mesh.internal", "A")}
