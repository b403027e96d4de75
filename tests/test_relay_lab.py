"""Every pair connects (issue 16): one mesh with an agent behind every NAT type of the lab, both
symmetric, a carrier-grade NAT and two hosts on one LAN. Every pair pings both ways; each pair
is `direct` wherever RFC 4787 lets it punch, `lan` on the same LAN, and `relay` only for the pairs
that need it. README's NAT table is this grid."""

from __future__ import annotations

import itertools
import re
import time

import pytest

from meshpeer.peer.timers import DIRECT_FIRST_TRY_S
from tests.lab import Lab, NatType
from tests.lab.agents import MeshAgent, all_direct
from tests.lab.api_hold import hold_api, let_api_through
from tests.lab.rendezvous import RendezvousServer
from tests.lab.wait import wait_until

pytestmark = pytest.mark.lab

# The NAT each agent sits behind; "cgnat" is a port-restricted home NAT behind a port-restricted
# carrier NAT, and desk1 and desk2 share one port-restricted office NAT.
BEHIND = {
    "cone": NatType.FULL_CONE,
    "cafe": NatType.ADDRESS_RESTRICTED,
    "home": NatType.PORT_RESTRICTED,
    "cgnat": NatType.PORT_RESTRICTED,
    "sym1": NatType.SYMMETRIC,
    "sym2": NatType.SYMMETRIC,
    "desk1": NatType.PORT_RESTRICTED,
    "desk2": NatType.PORT_RESTRICTED,
}


def expected_path(one: str, other: str) -> str:
    """RFC 4787: a symmetric NAT maps each destination to a new port, so its peer must take a
    port it never sent to, which only address-dependent filtering (or none) does."""
    if {one, other} == {"desk1", "desk2"}:
        return "lan"
    kinds = {BEHIND[one], BEHIND[other]}
    if NatType.SYMMETRIC not in kinds:
        return "direct"
    friendly = {NatType.FULL_CONE, NatType.ADDRESS_RESTRICTED}
    return "direct" if kinds & friendly else "relay"


def wrong_paths(agents: list[MeshAgent]) -> dict[str, dict[str, str]]:
    wrong: dict[str, dict[str, str]] = {}
    for agent in agents:
        paths = agent.paths()
        for other in agents:
            if other is not agent:
                want = expected_path(agent.name, other.name)
                if paths.get(other.name) != want:
                    wrong.setdefault(agent.name, {})[other.name] = f"{paths.get(other.name)}"
    return wrong


def build(lab: Lab) -> list[MeshAgent]:
    isp = lab.add_nat("isp", NatType.PORT_RESTRICTED, lan="100.64.0.0/24")
    office = lab.add_nat("office", NatType.PORT_RESTRICTED, hairpin=False)
    agents = []
    for name, kind in BEHIND.items():
        if name.startswith("desk"):
            host = office.add_host(name)
        elif name == "cgnat":
            host = lab.add_nat("flat", kind, upstream=isp).add_host(name)
        else:
            host = lab.add_nat(f"nat-{name}", kind).add_host(name)
        agents.append(MeshAgent(host, name))
    return agents


def test_every_pair_connects_and_only_those_that_must_are_relayed(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(len(BEHIND))
    agents = build(lab)
    started = time.monotonic()
    for agent in agents:
        agent.start(token)

    assert wait_until(lambda: not wrong_paths(agents), 60), wrong_paths(agents)
    print(f"every pair on its expected path {time.monotonic() - started:.1f} s after starting")
    for one, other in itertools.permutations(agents, 2):
        # Within a few seconds: a relayed path's try of the direct one breaks it for up to 2 s.
        target = other.address()
        assert wait_until(lambda: one.host.ping(target), 5), f"{one.name} cannot ping {other.name}"  # noqa: B023
    relayed = sum(expected_path(a, b) == "relay" for a, b in itertools.combinations(BEHIND, 2))
    # Within a PUT retry or two: partner changes are rationed (4, then one per 5 s).
    assert wait_until(lambda: server.metrics()["meshpeer_relayed_pairs"] == relayed, 20)
    assert server.metrics()["meshpeer_relayed_packets_total"] > 0
    listed = server.cli("peers")
    sym1 = next(line for line in listed.splitlines() if line.startswith("sym1 "))
    assert "home" in sym1 and "sym2" in sym1 and "cone" not in sym1, listed
    # Each relayed pair says why: one side's punch failed, or the other side asked first.
    logged = "".join(agent.output() for agent in agents)
    assert re.search(r"punch failed for \d+ s: relaying via", logged), logged
    assert "-> relay (handshake through the relay" in logged, logged


def test_a_pair_relayed_while_one_side_was_deaf_goes_direct_at_its_first_try(lab: Lab) -> None:
    # A late joiner punches a peer that cannot hear of it yet (its API connection held, as on a
    # rendezvous restart): the punch fails, and the pair, which could go direct, is relayed.
    # Both sides try the direct path about 10 s later; only the late joiner's NAT has a pinhole
    # then, so only one side's packet gets in, and the side it reached must answer at once or
    # the pair stays relayed for 5 minutes (CI saw it; tests/test_relay_paths.py has the round).
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(2)
    home = lab.add_nat("home", NatType.PORT_RESTRICTED)
    deaf = MeshAgent(home.add_host("deaf"), "deaf").start(token)
    assert wait_until(lambda: deaf.status() is not None, 20), deaf.output()
    hold_api(home, server.host)
    late = MeshAgent(lab.add_nat("cafe", NatType.PORT_RESTRICTED).add_host("late"), "late")
    late.start(token)
    assert wait_until(lambda: "punch failed for" in late.output(), 20), late.output()
    let_api_through(home)
    assert wait_until(lambda: "-> relay (" in late.output(), 30), late.output() + deaf.output()
    # The first try is DIRECT_FIRST_TRY_S after the relay; a missed one waits DIRECT_RETRY_S.
    assert wait_until(lambda: all_direct([deaf, late]), DIRECT_FIRST_TRY_S + 30), (
        late.output() + deaf.output()
    )
