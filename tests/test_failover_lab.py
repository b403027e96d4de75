"""Two rendezvous on one PostgreSQL database, and agents that outlive one of them (issue 18):
five agents behind their own NATs; `kill -9` the rendezvous their token named. Tunnels keep
working; every agent moves to the other instance (its API, WireGuard endpoint, relay and DNS)
within a loose bound; a NAT mapping reset still heals; a new peer joins through the survivor
and reaches all; `dig` against the survivor shows every peer; the killed one, restarted,
catches up without losing or duplicating anything."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from tests.lab import Lab, NatType
from tests.lab.agents import MeshAgent, all_direct
from tests.lab.rendezvous import DNS_PORT, RendezvousServer
from tests.lab.topology import Host
from tests.lab.wait import wait_until
from tests.pgcluster import Cluster

pytestmark = pytest.mark.lab

# The watch fails at once against a killed process's port; the agent moves after
# FAILOVER_AFTER_S (5 s) of failures, at its 4th try (about 7 s). Loose, for a busy machine.
MOVED_S = 30.0
SERVICE = "_wireguard._udp.mesh.internal"


def test_agents_move_to_the_surviving_rendezvous_after_kill_9(
    lab: Lab, postgres_cluster: Cluster
) -> None:
    database = asyncio.run(postgres_cluster.new_database())
    first = RendezvousServer(lab.add_public_host("rv1"), database=database).start()
    second = _second_instance(lab.add_public_host("rv2"), first, database)
    token = first.token(4)
    routers = [lab.add_nat(f"site{n}", NatType.PORT_RESTRICTED) for n in range(4)]
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
    print(f"all 4 agents on the second rendezvous {time.time() - killed:.1f} s after kill -9")
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
    late = MeshAgent(lab.add_nat("site4", NatType.PORT_RESTRICTED).add_host("p4"), "p4")
    late.start(second.token(1))
    everyone = [*agents, late]
    assert wait_until(lambda: all_direct(everyone), 60), [a.paths() for a in everyone]

    names = {agent.name for agent in everyone}
    assert _dig_names(site0, second, names) == names
    first.start()
    assert wait_until(lambda: _dig_names(site0, first, names) == names, 20)
    stored = first.peers()
    assert set(stored) == names
    assert len({peer["address"] for peer in stored.values()}) == len(names)


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
