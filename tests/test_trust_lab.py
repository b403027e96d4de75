"""Trust in the lab: the API's TLS is pinned by the token; a MITM learns nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.lab import Lab, NatType
from tests.lab.agents import MeshAgent
from tests.lab.rendezvous import API_PORT, RendezvousServer
from tests.lab.wait import wait_until

pytestmark = pytest.mark.lab

IMPOSTOR = Path(__file__).parent / "lab" / "impostor.py"


def test_an_impostor_on_the_api_address_learns_no_secret(lab: Lab) -> None:
    """The token names the real rendezvous's key; someone else answers at its API address."""
    public = lab.add_public_host("rendezvous")
    address = str(public.address)
    server = RendezvousServer(
        public,
        "--api-listen",  # the real API moves aside; the token still names the usual port
        f"{address}:{API_PORT + 1}",
        "--public-api-url",
        f"https://{address}:{API_PORT}",
        "--log-level",  # and the lab's check finds no secret in a debug log either
        "debug",
    ).start()
    impostor = public.spawn("impostor", [sys.executable, str(IMPOSTOR), address, str(API_PORT)])
    assert wait_until(lambda: "listening" in impostor.output(), 10), impostor.output()
    token = server.token(1)

    victim = MeshAgent(lab.add_nat("home", NatType.PORT_RESTRICTED).add_host("pc"), "pc")
    victim.start(token, "--log-level", "debug")
    process = victim.process
    assert process is not None
    assert wait_until(lambda: not process.running(), 20), victim.output()
    assert process.popen.returncode == 2
    [line] = [text for text in victim.output().splitlines() if "error" in text]
    assert "TLS key the token does not pin" in line and "nothing was sent" in line

    connections = [json.loads(text) for text in impostor.output().splitlines()[1:]]
    assert connections, "the agent never reached the impostor: the test proves nothing"
    assert all(connection["received"] == "" for connection in connections), connections
    assert server.peers() == {}  # and the real rendezvous spent no use of the token
