"""`meshpeer status` tells the truth (issue 14): a peer that went away is `offline` within
30 s, this machine's NAT mapping is shown, and so is whether the rendezvous answers."""

from __future__ import annotations

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
