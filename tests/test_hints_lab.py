"""DNS-SD and mDNS are hints: hostile answers on the path or on the LAN change nothing but, at
most, which endpoint the agent tries next (issue 12, DESIGN.md "Trust model").
"""

from __future__ import annotations

import base64
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.peer.mesh import REPUNCH_S
from tests.lab import Host, Lab, NatType
from tests.lab.agents import MeshAgent, all_direct
from tests.lab.rendezvous import RendezvousServer
from tests.lab.wait import wait_until

pytestmark = pytest.mark.lab

HELPERS = Path(__file__).with_name("lab")
ZONE = "mesh.internal"
MESH_UP_S = 20.0  # what the other lab tests give a two-peer mesh to go direct
SPOOFED_SERVICES = 30


def wg_peers(host: Host) -> dict[str, str]:
    """`wg show wg0 dump`: each peer's key and its allowed IPs."""
    lines = host.run(["wg", "show", "wg0", "dump"]).stdout.splitlines()[1:]
    return {fields[0]: fields[3] for fields in (line.split("\t") for line in lines)}


def routes(host: Host) -> str:
    return "".join(
        host.run(["ip", *family, "route", "show", "table", "all"]).stdout
        for family in (["-4"], ["-6"])
    )


def new_key() -> tuple[str, str]:
    """A private key as the agent stores it, and its public key, both base64."""
    key = X25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    return base64.b64encode(key.private_bytes_raw()).decode(), base64.b64encode(public).decode()


def test_spoofed_mdns_delays_a_direct_path_by_at_most_one_punch_interval(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(2)
    home = lab.add_nat("home", NatType.PORT_RESTRICTED)
    victim, spoofer = MeshAgent(home.add_host("victim"), "victim"), home.add_host("spoofer")
    friend = MeshAgent(lab.add_nat("site", NatType.PORT_RESTRICTED).add_host("friend"), "friend")
    # The friend's key is made up front, so the spoofer can claim it before the friend joins.
    private_key, friend_key = new_key()
    friend.state_dir.mkdir(mode=0o700)
    (friend.state_dir / "key").write_text(private_key + "\n")
    (friend.state_dir / "key").chmod(0o600)

    # Bogus addresses inside the victim's own subnet: the kind a LAN filter lets through.
    first_bogus = home.lan.network.network_address + 100
    spoofing = spoofer.spawn(
        "mdns-spoofer",
        [
            sys.executable,
            str(HELPERS / "mdns_spoofer.py"),
            str(spoofer.address),
            friend_key,
            str(first_bogus),
            str(SPOOFED_SERVICES),
        ],
    )
    assert wait_until(lambda: "announced" in spoofing.output(), 30), spoofing.output()
    victim.start(token)
    assert wait_until(lambda: "mDNS: announcing" in victim.output(), 15), victim.output()
    time.sleep(3)  # the victim's browser has resolved the spoofed services by now

    started = time.monotonic()
    friend.start(token)
    direct = wait_until(lambda: all_direct([victim, friend]), MESH_UP_S + REPUNCH_S)
    print(f"direct {time.monotonic() - started:.2f} s after the friend started")
    assert direct, (victim.output(), friend.output())
    assert victim.host.ping(friend.address())
