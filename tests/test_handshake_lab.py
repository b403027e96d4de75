"""The pure-Python responder against real wireguard-go peers behind lab NATs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab import Host, Lab, NatType
from tests.lab.process import LabProcess
from tests.lab.wait import wait_until
from tests.lab.wireguard import KeyPair, WireGuardGo

pytestmark = pytest.mark.lab
PROBE = Path(__file__).with_name("lab") / "responder_probe.py"
KEEPALIVE_S = 1


def start_responder(host: Host, keys: KeyPair, authorized: list[str]) -> LabProcess:
    argv = [sys.executable, str(PROBE), str(host.address), "51820", keys.private_key, *authorized]
    probe = host.spawn("responder", argv)
    assert wait_until(lambda: any("ready" in line for line in lines(probe)), 10), probe.output()
    return probe


def lines(probe: LabProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in probe.output().splitlines() if line.startswith("{")]


def confirmed_sources(probe: LabProcess) -> list[tuple[str, int]]:
    return [(line["source"][0], line["source"][1]) for line in lines(probe) if "confirmed" in line]


def test_a_peer_behind_a_nat_is_seen_at_its_mapping(lab: Lab) -> None:
    server = lab.add_public_host("rendezvous")
    nat = lab.add_nat("home", NatType.PORT_RESTRICTED)
    laptop = nat.add_host("laptop")
    rendezvous_keys = KeyPair.generate()
    wg = WireGuardGo(laptop, "10.77.0.2/24").start()
    probe = start_responder(server, rendezvous_keys, [wg.public_key])

    configured = time.monotonic()
    wg.add_peer(
        rendezvous_keys.public_key, "10.77.0.1/32", (str(server.address), 51820), KEEPALIVE_S
    )

    assert wait_until(lambda: confirmed_sources(probe), 2.0), probe.output()
    seen_after = time.monotonic() - configured
    assert wg.latest_handshakes()[rendezvous_keys.public_key] > 0, wg.show()
    source = confirmed_sources(probe)[0]
    assert source[0] == str(nat.public_address) and source[0] != str(laptop.address)
    print(f"endpoint confirmed {seen_after:.3f} s after configuring the peer")

    nat.reset_mappings()

    assert wait_until(lambda: confirmed_sources(probe)[-1] != source, KEEPALIVE_S + 1.0)
    moved = confirmed_sources(probe)[-1]
    assert moved[0] == source[0] and moved[1] != source[1], nat.nat_state()
