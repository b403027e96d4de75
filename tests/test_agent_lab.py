"""`meshpeer run` on hosts behind lab NATs, with a real rendezvous: the mesh forms directly."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.lab import Lab, NatType
from tests.lab.agents import MeshAgent
from tests.lab.rendezvous import RendezvousServer
from tests.lab.wait import wait_until

pytestmark = pytest.mark.lab


def all_direct(agents: list[MeshAgent]) -> bool:
    names = {agent.name for agent in agents}
    for agent in agents:
        paths = agent.paths()
        if set(paths) != names - {agent.name} or set(paths.values()) != {"direct"}:
            return False
    return True


def test_two_peers_behind_port_restricted_nats_mesh_directly(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.cli("token", "create", "--uses", "2").strip()
    agents = [
        MeshAgent(lab.add_nat(f"site{n}", NatType.PORT_RESTRICTED).add_host(f"p{n}"), f"p{n}")
        for n in range(2)
    ]
    started = time.monotonic()
    for agent in agents:
        agent.start(token)

    assert wait_until(lambda: all_direct(agents), 20), [a.output() for a in agents]
    print(f"all pairs direct {time.monotonic() - started:.2f} s after starting the agents")
    for one, other in itertools.permutations(agents, 2):
        assert one.host.ping(other.address()), f"{one.name} cannot ping {other.name}"
