"""Every pair connects (issue 16): agents behind symmetric NATs reach each other and a
port-restricted NAT through the rendezvous's relay, with stock wireguard-go at both ends,
while every pair RFC 4787 lets punch stays direct."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.lab import Lab, NatType
from tests.lab.agents import MeshAgent
from tests.lab.rendezvous import RendezvousServer
from tests.lab.wait import wait_until

pytestmark = pytest.mark.lab

# Which pairs may punch (RFC 4787): a symmetric NAT maps each destination to a new port, so its
# peer must accept a port it never sent to: only address-dependent filtering (or none) does.
EXPECTED = {
    frozenset({"sym1", "sym2"}): "relay",
    frozenset({"sym1", "home"}): "relay",
    frozenset({"sym2", "home"}): "relay",
    frozenset({"sym1", "cafe"}): "direct",
    frozenset({"sym2", "cafe"}): "direct",
    frozenset({"home", "cafe"}): "direct",
}


def paths_settled(agents: list[MeshAgent]) -> bool:
    for agent in agents:
        paths = agent.paths()
        for other in agents:
            if other is not agent:
                if paths.get(other.name) != EXPECTED[frozenset({agent.name, other.name})]:
                    return False
    return True


def test_symmetric_nats_connect_through_the_relay_and_the_rest_directly(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(4)
    kinds = {
        "sym1": NatType.SYMMETRIC,
        "sym2": NatType.SYMMETRIC,
        "home": NatType.PORT_RESTRICTED,
        "cafe": NatType.ADDRESS_RESTRICTED,
    }
    agents = [
        MeshAgent(lab.add_nat(f"nat-{name}", kind).add_host(name), name)
        for name, kind in kinds.items()
    ]
    started = time.monotonic()
    for agent in agents:
        agent.start(token)

    assert wait_until(lambda: paths_settled(agents), 40), {
        agent.name: agent.paths() for agent in agents
    }
    print(f"every pair on its expected path {time.monotonic() - started:.1f} s after starting")
    for one, other in itertools.permutations(agents, 2):
        # Within a few seconds: a relayed path's try of the direct one breaks it for up to 2 s.
        target = other.address()
        assert wait_until(lambda: one.host.ping(target), 5), f"{one.name} cannot ping {other.name}"  # noqa: B023
    metrics = server.metrics()
    assert metrics["meshpeer_relayed_packets_total"] > 0
    assert metrics["meshpeer_relayed_pairs"] >= 1
    listed = server.cli("peers")
    assert "RELAYED WITH" in listed
    sym1 = next(line for line in listed.splitlines() if line.startswith("sym1 "))
    assert "home" in sym1 and "sym2" in sym1, listed
    logged = agents[0].output()
    assert "relaying via" in logged and "-> relay (handshake through the relay" in logged, logged
