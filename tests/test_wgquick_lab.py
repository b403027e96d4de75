"""A phone that cannot run the agent (issue 16): `rendezvous peer add --config` gives it a
wg-quick configuration; run as wg-quick would (wireguard-go, `wg-quick strip`, the address and
a route per AllowedIPs) behind a symmetric NAT, it pings two agents through the relay.
And a relayed pair survives a `kill -9` of the rendezvous: it pings again soon after a restart."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.lab import Lab, NatType
from tests.lab.agents import MeshAgent, all_direct
from tests.lab.rendezvous import RendezvousServer
from tests.lab.wait import wait_until
from tests.lab.wireguard import WireGuardGo

pytestmark = pytest.mark.lab


def two_agents(lab: Lab, kind: NatType, prefix: str) -> tuple[RendezvousServer, list[MeshAgent]]:
    """A rendezvous and two started agents, each behind its own NAT of `kind`."""
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(2)
    hosts = [lab.add_nat(f"{prefix}-nat{n}", kind).add_host(f"{prefix}{n}") for n in range(2)]
    agents = [MeshAgent(host, host.name).start(token) for host in hosts]
    return server, agents


def test_a_phone_config_behind_a_symmetric_nat_reaches_two_agents(lab: Lab) -> None:
    server, agents = two_agents(lab, NatType.PORT_RESTRICTED, "pc")
    assert wait_until(lambda: all_direct(agents), 20), [a.output() for a in agents]

    config = server.cli("peer", "add", "--name", "phone", "--config")
    phone_host = lab.add_nat("carrier", NatType.SYMMETRIC).add_host("phone")
    config_file = phone_host.dir / "wg0.conf"
    config_file.write_text(config)
    stripped = phone_host.dir / "wg0.stripped"
    stripped.write_text(phone_host.run(["wg-quick", "strip", str(config_file)]).stdout)
    phone = WireGuardGo(phone_host, address_of(config))
    phone.start()
    phone_host.run(["wg", "setconf", "wg0", str(stripped)])
    for allowed in allowed_ips(config):  # as wg-quick does: a route per AllowedIPs
        phone_host.run(["ip", "route", "replace", allowed, "dev", "wg0"])

    addresses = [agent.address() for agent in agents]
    assert wait_until(lambda: all(phone_host.ping(a) for a in addresses), 30), [
        phone.show(),
        *(agent.output() for agent in agents),
    ]
    phone_address = address_of(config).split("/")[0]
    for agent in agents:
        assert agent.host.ping(phone_address), f"{agent.name} cannot ping the phone"
        assert wait_until(lambda: agent.paths()["phone"] == "relay", 5), agent.paths()  # noqa: B023


def address_of(config: str) -> str:
    return next(line.split(" = ")[1] for line in config.splitlines() if line.startswith("Address"))


def allowed_ips(config: str) -> list[str]:
    found = []
    for line in config.splitlines():
        if line.startswith("AllowedIPs = "):
            found += [item.strip() for item in line.split(" = ")[1].split(",")]
    return found


def test_a_relayed_pair_pings_again_soon_after_the_rendezvous_is_killed(lab: Lab) -> None:
    server, agents = two_agents(lab, NatType.SYMMETRIC, "m")

    def relayed() -> bool:
        return all(set(agent.paths().values()) == {"relay"} for agent in agents)

    assert wait_until(relayed, 30), [agent.output() for agent in agents]
    pairs = [(one, other.address()) for one, other in itertools.permutations(agents, 2)]
    server.kill()
    killed = time.monotonic()
    server.start()

    def both_ways() -> bool:
        return all(one.host.ping(address) for one, address in pairs)

    assert wait_until(both_ways, 15), [agent.output() for agent in agents]
    print(f"the relayed pair pings again {time.monotonic() - killed:.1f} s after the kill")
