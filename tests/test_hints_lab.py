"""DNS-SD and mDNS are hints: hostile answers on the path or on the LAN change nothing but, at
most, which endpoint the agent tries next (issue 12, DESIGN.md "Trust model").
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.dns.naming import instance_label as label_of_key
from meshpeer.peer.timers import REPUNCH_S
from tests.lab import Host, Lab, NatType, Router
from tests.lab.agents import MeshAgent, all_direct
from tests.lab.api_hold import hold_api, let_api_through
from tests.lab.netns import run
from tests.lab.rendezvous import DNS_PORT, RendezvousServer
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
    """Every route of the host, once its addresses are settled: the kernel adds an IPv6
    link-local address's route when duplicate address detection ends, about 2 s after the
    link comes up, and a mesh can be up before that (CI saw the route arrive mid-test)."""
    settled = wait_until(lambda: not host.run(["ip", "-6", "addr", "show", "tentative"]).stdout, 10)
    assert settled, host.run(["ip", "-6", "addr"]).stdout
    return "".join(
        host.run(["ip", *family, "route", "show", "table", "all"]).stdout
        for family in (["-4"], ["-6"])
    )


def new_key() -> tuple[str, str]:
    """A private key as the agent stores it, and its public key, both base64."""
    key = X25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    return base64.b64encode(key.private_bytes_raw()).decode(), base64.b64encode(public).decode()


def instance_label(public_key: str) -> str:
    return label_of_key(base64.b64decode(public_key))


def hijack_dns(router: Router, rendezvous: Host, attacker: Host) -> None:
    """The router on the agent's path answers the rendezvous's DNS with the attacker's server
    (a hostile hotel network, a compromised home router)."""
    rules = "\n".join(
        f'    iifname "lan" ip daddr {rendezvous.address} {proto} dport {DNS_PORT} '
        f"dnat to {attacker.address}"
        for proto in ("udp", "tcp")
    )
    ruleset = (
        "table ip hijack {\n  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat - 10; policy accept;\n"
        f"{rules}\n  }}\n}}\n"
    )
    run(["ip", "netns", "exec", router.ns, "nft", "-f", "-"], stdin=ruleset)


def hostile_instance(public_key: str, endpoint: Host, *txt: str) -> dict[str, object]:
    return {
        "public_key": public_key,
        "address": str(endpoint.address),
        "port": 51820,
        "txt": ["txtvers=1", f"pub={public_key}", *txt],
    }


def direct_between(agents: list[MeshAgent]) -> bool:
    """Each agent's path to every other one is `direct` (other listed peers aside)."""
    for agent in agents:
        paths = agent.paths()
        if any(paths.get(other.name) != "direct" for other in agents if other is not agent):
            return False
    return True


def test_hostile_dns_sd_answers_add_no_peer_no_route_and_no_uapi_line(lab: Lab) -> None:
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(4)
    attacker = lab.add_public_host("attacker")
    home = lab.add_nat("home", NatType.PORT_RESTRICTED)
    # A listed peer that joined and stopped: the victim's path to it stays down, and an agent
    # reads DNS-SD only while one is, and its watch does not answer (Agent._poll_dns_sd).
    gone = MeshAgent(lab.add_nat("away", NatType.PORT_RESTRICTED).add_host("gone"), "gone")
    gone.start(token)
    assert wait_until(lambda: gone.status() is not None, 15), gone.output()
    gone_status = gone.status()
    assert gone_status is not None and gone.process is not None
    gone.process.stop()
    victim = MeshAgent(home.add_host("victim"), "victim")
    friend = MeshAgent(lab.add_nat("site", NatType.PORT_RESTRICTED).add_host("friend"), "friend")
    for agent in (victim, friend):
        agent.start(token, "--dns-sd-interval", "1")
    assert wait_until(lambda: direct_between([victim, friend]), MESH_UP_S), victim.output()
    friend_status, rendezvous_key = friend.status(), server.public_key()
    assert friend_status is not None
    friend_key, friend_address = friend_status["public_key"], friend_status["address"]
    listed = {(friend_key, friend_address), (gone_status["public_key"], gone_status["address"])}
    rendezvous_hex = base64.b64decode(rendezvous_key).hex()
    peers_before, routes_before = wg_peers(victim.host), routes(victim.host)
    assert set(peers_before) == {rendezvous_key, friend_key, gone_status["public_key"]}

    spec = {
        "zone": ZONE,
        "instances": [
            # a default route into the tunnel, to the attacker
            hostile_instance(new_key()[1], attacker, "name=evil", "address=10.77.0.99",
                             "allowed=0.0.0.0/0"),
            # the friend's mesh address under the attacker's key
            hostile_instance(new_key()[1], attacker, f"address={friend_address}",
                             f"allowed={friend_address}/32"),
            # a newline: UAPI lines that remove the rendezvous
            hostile_instance(new_key()[1], attacker, "address=10.77.0.98",
                             f"allowed=10.77.0.98/32\npublic_key={rendezvous_hex}\nremove=true"),
            # a listed peer: its records may move an endpoint candidate, nothing else
            hostile_instance(friend_key, attacker, "address=10.77.0.97", "allowed=0.0.0.0/0"),
        ],
    }  # fmt: skip
    spec_path = attacker.dir / "zone.json"
    spec_path.write_text(json.dumps(spec))
    fake = attacker.spawn(
        "hostile-dns",
        [sys.executable, str(HELPERS / "hostile_dns.py"), str(attacker.address), str(spec_path)],
    )
    assert wait_until(lambda: "serving" in fake.output(), 10), fake.output()
    hijack_dns(home, server.host, attacker)
    hold_api(home, server.host)

    # Three polls answered: the second one's peers have been through reconcile by then. (Not
    # asserted yet: a default route into the tunnel would swallow the later queries.)
    # (The watch is given up on within 14 s of TCP keepalives: timers.DEAD_CONNECTION_S.)
    polled = wait_until(lambda: fake.output().count(f"_wireguard._udp.{ZONE}. PTR") >= 3, 45)
    time.sleep(2)

    assert wg_peers(victim.host) == peers_before, victim.output()
    assert routes(victim.host) == routes_before
    # The zone was read at every poll; a key the API does not list is not even asked about.
    asked = fake.output()
    assert polled and asked.count(f"{instance_label(friend_key)}.") >= 2, asked
    assert asked.count(" SRV") == asked.count(f"{instance_label(friend_key)}."), asked
    status = victim.status()
    assert status is not None, victim.output()
    assert {(p["public_key"], p["address"]) for p in status["peers"]} == listed
    assert victim.process is not None and victim.process.running()

    let_api_through(home)
    newcomer = MeshAgent(lab.add_nat("cafe", NatType.PORT_RESTRICTED).add_host("new"), "new")
    newcomer.start(token)
    agents = [victim, friend, newcomer]
    assert wait_until(lambda: direct_between(agents), MESH_UP_S), victim.output()
    assert victim.host.ping(newcomer.address())
    assert rendezvous_key in wg_peers(victim.host)
    assert routes(victim.host) == routes_before


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
