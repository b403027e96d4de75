"""`meshpeer status` tells the truth (issue 14): a peer that went away is `offline` within
30 s, this machine's NAT mapping is shown, and so is whether the rendezvous answers."""

from __future__ import annotations

import os
import time

import pytest

from tests.lab import Lab, NatType
from tests.lab.agents import MESHPEER, MeshAgent, all_direct
from tests.lab.rendezvous import RendezvousServer
from tests.lab.wait import wait_until

pytestmark = pytest.mark.lab


def test_an_offline_peer_and_an_unreachable_rendezvous_show_as_such(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(2)
    home, away = (lab.add_nat(name, NatType.PORT_RESTRICTED) for name in ("home", "away"))
    stay = MeshAgent(home.add_host("stay"), "stay").start(token)
    leave = MeshAgent(away.add_host("leave"), "leave").start(token)
    assert wait_until(lambda: all_direct([stay, leave]), 20)
    status = stay.status()
    assert status is not None
    [peer] = status["peers"]
    assert peer["online"] and peer["rx_bytes"] > 0 and peer["last_seen"]
    assert status["endpoint"] and status["endpoint"].startswith(str(home.public_address))
    assert status["rendezvous"]["answering"]

    leave.host.run(["ip", "link", "set", "eth0", "down"])  # off the network, without a word
    gone = time.monotonic()
    assert wait_until(lambda: not (stay.status() or {"peers": [{}]})["peers"][0].get("online"), 40)
    took = time.monotonic() - gone
    print(f"offline {took:.1f} s after the peer went off the network")
    assert took <= 32, took  # 28 s after the last keepalive at most, and the polling

    server.kill()
    assert wait_until(lambda: not (stay.status() or {})["rendezvous"]["answering"], 40)
    table = stay.host.run([MESHPEER, "status", "--state-dir", str(stay.state_dir)]).stdout
    assert "offline" in table and "does not answer" in table, table
    server.start()
    assert wait_until(lambda: (stay.status() or {})["rendezvous"]["answering"], 40)
    assert "the rendezvous answers again" in stay.output()


def test_with_systemd_resolved_the_zone_resolves_through_the_mesh_dns(lab: Lab) -> None:
    """resolvectl here is a stand-in that writes down what it was asked: the lab has no D-Bus."""
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    host = lab.add_nat("home", NatType.PORT_RESTRICTED).add_host("pc")
    (host.rundir / "systemd" / "resolve").mkdir(parents=True)  # resolved runs (this /run)
    tools = host.dir / "bin"
    tools.mkdir()
    asked = host.dir / "resolvectl.log"
    (tools / "resolvectl").write_text(f'#!/bin/sh\necho "$@" >> {asked}\n')
    (tools / "resolvectl").chmod(0o755)
    agent = MeshAgent(host, "pc")
    command = [MESHPEER, "run", "--state-dir", str(agent.state_dir), "--backend", "userspace"]
    environment = {"MESHPEER_TOKEN": server.token(1), "PATH": f"{tools}:{os.environ['PATH']}"}
    agent.process = host.spawn("meshpeer-pc", command, environment)
    assert wait_until(lambda: asked.exists() and len(asked.read_text().splitlines()) == 2, 15)
    assert asked.read_text().splitlines() == [
        f"dns wg0 {server.host.address}:53",
        "domain wg0 ~mesh.internal",
    ]
    assert "names under mesh.internal. now resolve through" in agent.output()
