"""The relay: its forwarding rate, a relayed tunnel against a direct one, and how soon a pair
behind symmetric NATs is connected.

    .venv/bin/python bench/relay.py [--runs 5] [--seconds 5] [--smoke]

- core: transport datagrams (1,452 bytes, a full 1420-MTU packet) forwarded per second by the
  relay core alone, one core, no sockets;
- on the wire: two wireguard-go peers on two public lab hosts, with the real `rendezvous serve`
  (its per-peer cap raised out of the way) on a third. The same pair, first direct, then
  pointed at each other through the relay: iperf3 TCP throughput and ping RTT across the
  tunnel, and the datagrams per second the rendezvous relayed meanwhile (from /metrics); and
  the same tunnel through a bare forwarder (bench/forwarder.py: one recvfrom and one sendto a
  datagram, nothing checked), the floor under any relay that reads a UDP socket here;
- connect: two `meshpeer run` agents behind symmetric NATs, from starting both to both showing
  path `relay`.
Medians over the runs, side by side in one run. Not a test: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from loadgen import machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.lab

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common.keys import encode_key, parse_key
from meshpeer.rendezvous import wire
from meshpeer.rendezvous.handshake import Responder
from meshpeer.rendezvous.initiator import Initiator
from meshpeer.rendezvous.relay import Relay
from tests.lab import Lab, NatType
from tests.lab.agents import MeshAgent
from tests.lab.rendezvous import RendezvousServer
from tests.lab.wireguard import WireGuardGo

TIMEOUT_S = 60.0
PACKET = 1452
FORWARDER_PORT = 51830


def core_rate(seconds: float) -> float:
    """Transport datagrams forwarded per second by the core, after one real handshake."""
    relay = Relay(bytes_per_s=1e15, burst_bytes=1e15)
    bob = Responder(X25519PrivateKey.generate())
    alice = Initiator(X25519PrivateKey.generate(), bob.public_key)
    bob.authorize(alice.public_key)
    alice_at, bob_at, relay_at = ("198.51.100.7", 40001), ("192.0.2.9", 50002), ("203.0.113.1", 1)
    relay.set_endpoint(alice.public_key, alice_at)
    relay.set_endpoint(bob.public_key, bob_at)
    relay.set_partners(alice.public_key, [bob.public_key])
    initiation = alice.initiation(time.time())
    relay.forward(wire.parse(initiation), initiation, alice_at, 0.0)
    bob.receive_datagram(initiation, relay_at, 0.0)
    [(response, _)] = bob.datagrams_to_send()
    relay.forward(wire.parse(response), response, bob_at, 0.0)
    alice.receive(response)
    if alice.keys is None:
        raise SystemExit("bench: the handshake through the relay core did not complete")
    datagram = (
        (4).to_bytes(4, "little")
        + alice.keys.remote_index.to_bytes(4, "little")
        + bytes(PACKET - 8)
    )
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(1000):
            relay.receive_datagram(datagram, alice_at, 1.0)
            relay.datagrams_to_send()
        count += 1000
    return count / (time.perf_counter() - started)


def wait(predicate: Callable[[], bool], what: str) -> float:
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline:
        if predicate():
            return time.time()
        time.sleep(0.05)
    raise SystemExit(f"bench: {what} did not happen within {TIMEOUT_S:.0f} s")


def tunnel(seconds: float) -> dict[str, float]:
    """iperf3 and ping between two wireguard-go peers, direct and then through the relay."""
    figures: dict[str, float] = {}
    with Lab() as lab:
        # The per-peer cap (100 Mbit/s by default) out of the way: this measures the relay.
        host = lab.add_public_host("rendezvous")
        server = RendezvousServer(host, "--relay-rate", "100000").start()
        rendezvous_key = server.public_key()
        ends = [WireGuardGo(lab.add_public_host(f"end{n}"), f"10.77.0.{n + 2}/16") for n in (0, 1)]
        for n, end in enumerate(ends):
            end.start()
            server.cli("peer", "add", "--public-key", end.public_key, "--name", f"end{n}")
            end.add_peer(rendezvous_key, "10.77.0.1/32", server.endpoint, 10)
        wait(lambda: all(_confirmed(server, f"end{n}") for n in (0, 1)), "both ends confirmed")
        a, b = ends
        for here, there in ((a, b), (b, a)):
            address = str(there.interface.ip)
            here.add_peer(there.public_key, f"{address}/32", (str(there.node.address), 51820), 25)
        figures.update(_measure(a, b, seconds, "direct", server))
        _pair_in_relay(server, a.public_key, b.public_key)
        for here, there in ((a, b), (b, a)):
            # A new WireGuard peer: its first handshake goes through the relay, which learns
            # the session's indices from it (a session made directly is unknown there).
            here.node.run(["wg", "set", here.ifname, "peer", there.public_key, "remove"])
            here.add_peer(there.public_key, f"{there.interface.ip}/32", server.endpoint, 25)
        time.sleep(1.0)
        figures.update(_measure(a, b, seconds, "relayed", server))
        figures.update(_bare(lab, a, b, seconds, server))
    return figures


def _bare(
    lab: Lab, a: WireGuardGo, b: WireGuardGo, seconds: float, server: RendezvousServer
) -> dict[str, float]:
    """The pair through bench/forwarder.py on a host of its own (the WireGuard peers roam)."""
    host = lab.add_public_host("forwarder")
    script = str(Path(__file__).resolve().parent / "forwarder.py")
    ends = [str(a.node.address), str(b.node.address), str(FORWARDER_PORT)]
    host.spawn("forwarder", [sys.executable, script, *ends])
    time.sleep(0.3)
    for here, there in ((a, b), (b, a)):
        endpoint = f"{host.address}:{FORWARDER_PORT}"
        here.node.run(["wg", "set", here.ifname, "peer", there.public_key, "endpoint", endpoint])
    time.sleep(0.5)
    return _measure(a, b, seconds, "bare forwarder", server)


def _confirmed(server: RendezvousServer, name: str) -> bool:
    return server.peers().get(name, {}).get("endpoint") is not None


def _pair_in_relay(server: RendezvousServer, one: str, other: str) -> None:
    """What `PUT /v1/relay` stores, each naming the other as agents do, written straight into
    the database as the bench's ends have no agent: the serving process follows within 50 ms."""
    with contextlib.closing(sqlite3.connect(server.data_dir / "rendezvous.sqlite3")) as db, db:
        for name, partner in ((one, other), (other, one)):
            partners = json.dumps([encode_key(parse_key(partner))])
            key = parse_key(name)
            db.execute("UPDATE peers SET relay_partners = ? WHERE public_key = ?", (partners, key))
            db.execute("INSERT INTO changes (public_key) VALUES (?)", (key,))
    time.sleep(0.5)


def _measure(
    a: WireGuardGo, b: WireGuardGo, seconds: float, label: str, server: RendezvousServer
) -> dict[str, float]:
    target = str(b.interface.ip)
    if not a.node.ping(target, 3):
        drops = {k: v for k, v in server.metrics().items() if "relay" in k}
        raise SystemExit(f"bench: {label}: no ping across the tunnel; relay: {drops}")
    ping = a.node.run(["ping", "-c", "20", "-i", "0.05", "-q", target]).stdout
    rtt = float(re.search(r"= [\d.]+/([\d.]+)/", ping).group(1))  # type: ignore[union-attr]
    iperf_server = b.node.spawn(f"iperf3-{label}", ["iperf3", "-s", "-1", "-B", target])
    time.sleep(0.3)
    before = server.metrics().get("meshpeer_relayed_packets_total", 0.0)
    command = ["iperf3", "-c", target, "-t", str(seconds), "-J"]
    report = json.loads(a.node.run(command, timeout=seconds + 30).stdout)
    after = server.metrics().get("meshpeer_relayed_packets_total", 0.0)
    iperf_server.stop()
    bits = report["end"]["sum_received"]["bits_per_second"]
    figures = {f"{label} Mbit/s": bits / 1e6, f"{label} ping ms": rtt}
    if label == "relayed":
        figures["datagrams relayed meanwhile /s"] = (after - before) / seconds
    return figures


def connect_symmetric() -> float:
    """Seconds from starting two agents behind symmetric NATs to both on path `relay`."""
    with Lab() as lab:
        server = RendezvousServer(lab.add_public_host("rendezvous")).start()
        token = server.token(2)
        agents = [
            MeshAgent(lab.add_nat(f"mobile{n}", NatType.SYMMETRIC).add_host(f"m{n}"), f"m{n}")
            for n in (0, 1)
        ]
        started = time.time()
        for agent in agents:
            agent.start(token)
        done = wait(
            lambda: all(set(agent.paths().values()) == {"relay"} for agent in agents),
            "the symmetric pair on path relay",
        )
        return done - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--smoke", action="store_true", help="one short run: for the tests")
    args = parser.parse_args()
    runs, seconds = (1, 1.0) if args.smoke else (args.runs, args.seconds)
    print(machine())
    print(f"{runs} runs; wireguard-go; lab in namespaces; iperf3 for {seconds:g} s each way")
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        samples.setdefault("core datagrams/s", []).append(core_rate(seconds))
        for name, value in tunnel(seconds).items():
            samples.setdefault(name, []).append(value)
        samples.setdefault("symmetric pair connected, s", []).append(connect_symmetric())
    for name, values in samples.items():
        print(f"  {name:<36} median {statistics.median(values):12.2f}  ({_spread(values)})")
    direct = statistics.median(samples["direct Mbit/s"])
    relayed = statistics.median(samples["relayed Mbit/s"])
    bare = statistics.median(samples["bare forwarder Mbit/s"])
    print(f"  ratio relayed / direct throughput     {relayed / direct:.2f} (goal >= 0.8)")
    print(f"  ratio bare forwarder / direct         {bare / direct:.2f}")


def _spread(values: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


if __name__ == "__main__":
    main()
