"""`rendezvous serve` against real wireguard-go peers behind lab NATs, through its real CLI."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab import Lab, NatType
from tests.lab.process import LabProcess
from tests.lab.rendezvous import RendezvousServer
from tests.lab.wait import wait_until
from tests.lab.wireguard import WireGuardGo
from tests.pgcluster import Cluster

pytestmark = pytest.mark.lab
LAB = Path(__file__).with_name("lab")
KEEPALIVE_S = 2
RENDEZVOUS_MESH_ADDRESS = "10.77.0.1/32"
SECOND_ADDRESS = "203.0.113.200"  # a second address on the rendezvous host (not handed out)


def json_lines(process: LabProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in process.output().splitlines() if line.startswith("{")]


def endpoint_of(server: RendezvousServer, name: str) -> str | None:
    endpoint: str | None = server.peers()[name]["endpoint"]
    return endpoint


def test_a_peer_behind_a_nat_shows_at_its_mapping_and_follows_a_new_one(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    nat = lab.add_nat("home", NatType.PORT_RESTRICTED)
    laptop = nat.add_host("laptop")
    wg = WireGuardGo(laptop, "10.77.0.2/16").start()
    server.cli("peer", "add", "--public-key", wg.public_key, "--name", "laptop")
    server_key = server.public_key()

    configured_at = time.time()
    wg.add_peer(server_key, RENDEZVOUS_MESH_ADDRESS, server.endpoint, KEEPALIVE_S)

    assert wait_until(lambda: endpoint_of(server, "laptop"), 2.0), server.peers()
    shown_after = time.time() - configured_at
    first = server.peers()["laptop"]
    host, port = first["endpoint"].rsplit(":", 1)
    assert host == str(nat.public_address) and host != str(laptop.address)
    assert f": {host} . {port}" in nat.nat_state(), nat.nat_state()  # the NAT's own mapping
    assert wg.latest_handshakes()[server_key] > 0, wg.show()
    assert first["last_handshake"] is not None

    reset_at = time.time()
    nat.reset_mappings()

    assert wait_until(lambda: endpoint_of(server, "laptop") != first["endpoint"], KEEPALIVE_S + 3)
    moved = server.peers()["laptop"]
    new_host, new_port = moved["endpoint"].rsplit(":", 1)
    assert new_host == host and new_port != port
    seen_after_reset = moved["endpoint_confirmed_at"] - reset_at
    assert seen_after_reset <= KEEPALIVE_S + 0.25, seen_after_reset
    print(
        f"endpoint shown by `rendezvous peers` {shown_after:.2f} s after configuring; "
        f"new mapping confirmed {seen_after_reset:.2f} s after the reset "
        f"(keepalive every {KEEPALIVE_S} s)"
    )


def test_on_a_wildcard_bind_answers_leave_from_the_address_the_peer_dialled(lab: Lab) -> None:
    """A public host with two addresses: the kernel would answer from the first one, and the
    peer's NAT, which filters by address, would drop that answer."""
    host = lab.add_public_host("rendezvous")
    host.run(["ip", "addr", "add", f"{SECOND_ADDRESS}/24", "dev", "eth0"])
    dialled = (SECOND_ADDRESS, 51820)
    flags = ["--wg-listen", "0.0.0.0:51820", "--public-endpoint", f"{SECOND_ADDRESS}:51820"]
    server = RendezvousServer(host, *flags).start()
    nat = lab.add_nat("home", NatType.PORT_RESTRICTED)
    wg = WireGuardGo(nat.add_host("laptop"), "10.77.0.2/16").start()
    server.cli("peer", "add", "--public-key", wg.public_key, "--name", "laptop")
    server_key = server.public_key()

    wg.add_peer(server_key, RENDEZVOUS_MESH_ADDRESS, dialled, KEEPALIVE_S)

    assert wait_until(lambda: wg.latest_handshakes()[server_key] > 0, 4), wg.show()
    assert wait_until(lambda: endpoint_of(server, "laptop"), 2), server.peers()


def test_a_replayed_initiation_does_not_move_the_endpoint(lab: Lab) -> None:
    """An on-path attacker records the peer's initiations and sends them from elsewhere."""
    rendezvous_host = lab.add_public_host("rendezvous")
    server = RendezvousServer(rendezvous_host).start()
    attacker = lab.add_public_host("attacker").udp_socket(40000)
    nat = lab.add_nat("home", NatType.PORT_RESTRICTED)
    wg = WireGuardGo(nat.add_host("laptop"), "10.77.0.2/16").start()
    server.cli("peer", "add", "--public-key", wg.public_key, "--name", "laptop")
    sniffer = rendezvous_host.spawn("sniffer", [sys.executable, str(LAB / "sniffer.py"), "51820"])
    assert wait_until(lambda: json_lines(sniffer), 5), sniffer.output()

    # The attacker holds the peer's first initiation back: the rendezvous never sees it.
    block = f"ip saddr {nat.public_address} udp dport 51820 drop"
    rendezvous_host.run(["nft", "add table ip attack"])
    rendezvous_host.run(["nft", "add chain ip attack in { type filter hook input priority -5; }"])
    rendezvous_host.run(["nft", f"add rule ip attack in {block}"])
    wg.add_peer(server.public_key(), RENDEZVOUS_MESH_ADDRESS, server.endpoint, KEEPALIVE_S)
    assert wait_until(lambda: recorded_initiations(sniffer), 5), sniffer.output()
    recorded = recorded_initiations(sniffer)[0]

    # Sent fresh from another host, the rendezvous answers it (it cannot tell yet) ...
    attacker.send_bytes(server.endpoint, recorded)
    answer = attacker.recv_bytes(timeout=2)
    assert answer is not None and answer[0][0] == 2, "the fresh initiation got no response"
    # ... but without the session keys the attacker sends no valid keepalive: nothing recorded.
    time.sleep(1.0)
    assert endpoint_of(server, "laptop") is None

    rendezvous_host.run(["nft", "delete table ip attack"])
    # wireguard-go retries every 5 s with a new timestamp; that one completes and confirms.
    assert wait_until(lambda: endpoint_of(server, "laptop"), 12), server.peers()
    genuine = endpoint_of(server, "laptop")
    assert genuine is not None and genuine.startswith(f"{nat.public_address}:")

    for initiation in recorded_initiations(sniffer):
        attacker.send_bytes(server.endpoint, initiation)
    assert attacker.recv_bytes(timeout=1) is None  # replays get no answer at all
    time.sleep(1.0)
    assert endpoint_of(server, "laptop") == genuine
    assert server.metrics()['meshpeer_drops_total{reason="replayed_initiation"}'] >= 1


def recorded_initiations(sniffer: LabProcess) -> list[bytes]:
    return [
        bytes.fromhex(line["payload"])
        for line in json_lines(sniffer)
        if line.get("payload", "").startswith("01000000") and len(line["payload"]) == 296
    ]


def test_an_unregistered_key_gets_no_reply(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    stranger = WireGuardGo(
        lab.add_nat("home", NatType.PORT_RESTRICTED).add_host("s"), "10.7.0.2/16"
    )
    stranger.start()
    server_key = server.public_key()

    stranger.add_peer(server_key, RENDEZVOUS_MESH_ADDRESS, server.endpoint, KEEPALIVE_S)

    # wireguard-go retries after 5 s: wait for the second initiation to be refused too.
    dropped = 'meshpeer_drops_total{reason="unknown_peer"}'
    assert wait_until(lambda: server.metrics().get(dropped, 0) >= 2, 12), server.metrics()
    assert stranger.latest_handshakes()[server_key] == 0, stranger.show()
    assert server.metrics()["meshpeer_handshakes_total"] == 0
    received = stranger.node.run(["wg", "show", "wg0", "transfer"]).stdout.split()
    assert received[1] == "0", f"the stranger received bytes: {received}"


def test_under_a_flood_the_rendezvous_asks_for_cookies_and_a_peer_still_gets_in(lab: Lab) -> None:
    rendezvous_host = lab.add_public_host("rendezvous")
    server = RendezvousServer(rendezvous_host).start()
    flooder = lab.add_public_host("flooder")
    nat = lab.add_nat("home", NatType.PORT_RESTRICTED)
    wg = WireGuardGo(nat.add_host("laptop"), "10.77.0.2/16").start()
    server.cli("peer", "add", "--public-key", wg.public_key, "--name", "laptop")
    server_key = server.public_key()
    # 2,000 a second for 15 s: four times the cookie threshold, and bounded.
    flood_argv = [sys.executable, str(LAB / "flood.py"), *map(str, server.endpoint)]
    flood = flooder.spawn("flood", [*flood_argv, server_key, "30000", "2000"])
    assert wait_until(lambda: server.metrics().get("meshpeer_under_load") == 1, 5), flood.output()

    wg.add_peer(server_key, RENDEZVOUS_MESH_ADDRESS, server.endpoint, KEEPALIVE_S)

    # wireguard-go's first initiation gets a cookie reply; its retry 5 s later carries mac2.
    assert wait_until(lambda: wg.latest_handshakes()[server_key] > 0, 12), server.metrics()
    metrics = server.metrics()
    assert flood.running(), "the flood ended before the peer got in: the test proved nothing"
    assert metrics["meshpeer_under_load"] == 1
    assert metrics["meshpeer_cookie_replies_total"] > 1000
    assert wait_until(lambda: endpoint_of(server, "laptop"), 3), server.peers()
    print(f"cookie replies sent during the flood: {int(metrics['meshpeer_cookie_replies_total'])}")


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_kill_9_during_a_burst_of_joins_loses_no_acknowledged_registration(
    lab: Lab, engine: str, request: pytest.FixtureRequest
) -> None:
    database = None
    if engine == "postgresql":  # the cluster's unix socket reaches into the lab's namespaces
        cluster: Cluster = request.getfixturevalue("postgres_cluster")
        database = asyncio.run(cluster.new_database())
    host = lab.add_public_host("rendezvous")
    server = RendezvousServer(host, database=database).start()
    client = lab.add_public_host("client")
    token = server.token(1000)
    burst = client.spawn(
        "joins",
        [sys.executable, str(LAB / "join_burst.py"), server.api_url, token, "600", "16"],
    )
    assert wait_until(lambda: len(acked(burst)) >= 40, 30), burst.output()

    server.kill()

    assert wait_until(lambda: any("done" in line for line in json_lines(burst)), 30)
    promised = acked(burst)
    server.start()
    stored = server.peers()
    lost = {name for name in promised if name not in stored}
    assert not lost, f"acknowledged but lost: {sorted(lost)}"
    assert all(stored[name]["address"] == promised[name] for name in promised)
    assert len({peer["address"] for peer in stored.values()}) == len(stored)
    assert (server.data_dir / "rendezvous.sqlite3").exists() == (database is None)
    print(f"{len(promised)} joins acknowledged before kill -9; all {len(stored)} stored after")


def acked(burst: LabProcess) -> dict[str, str]:
    return {line["acked"]: line["address"] for line in json_lines(burst) if "acked" in line}
