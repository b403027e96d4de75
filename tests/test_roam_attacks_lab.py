"""The outside review of issue 17's roaming, in the lab: what a move does to stopping."""

from __future__ import annotations

import signal
import time

import pytest

from tests.lab import Lab, NatType
from tests.lab.agents import MeshAgent, all_direct
from tests.lab.rendezvous import RendezvousServer
from tests.lab.wait import wait_until

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("delay_s", [0.0, 0.3])
def test_sigterm_during_a_roam_stops_the_agent_within_2_s(lab: Lab, delay_s: float) -> None:
    """A move restarts mDNS, reads netlink off the loop and re-reports the LAN: a SIGTERM in
    the middle of it (right at the move, or as the roam runs) still stops within 2 s."""
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(2)
    home = lab.add_nat("home", NatType.PORT_RESTRICTED)
    laptop = MeshAgent(home.add_host("laptop"), "laptop")
    cloud = MeshAgent(lab.add_public_host("cloud"), "cloud")
    for agent in (laptop, cloud):
        agent.start(token)
    assert wait_until(lambda: all_direct([laptop, cloud]), 30), laptop.output()
    cafe = lab.add_nat("cafe", NatType.PORT_RESTRICTED)
    laptop.host.move_to(cafe)
    time.sleep(delay_s)
    process = laptop.process
    assert process is not None and process.running(), laptop.output()
    started = time.monotonic()
    process.popen.send_signal(signal.SIGTERM)
    process.popen.wait(10)
    took = time.monotonic() - started
    assert took < 2.0, f"stopped {took:.2f} s after SIGTERM\n{laptop.output()}"
    assert "Traceback" not in laptop.output(), laptop.output()
