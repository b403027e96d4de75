"""One rendezvous and 100,000 simulated peers: CPU share, memory, and DNS latency while it runs.

    .venv/bin/python bench/scale.py [--peers 100000] [--seconds 30] [--smoke]

In a network namespace of the benchmark's own, `rendezvous serve` runs on core 0 with every peer
registered. The simulation runs on core 1 with our own initiator core (`Initiator`): every peer
has its own key and its own source address (127.x.y.z), completes a handshake (honouring cookie
replies, which the rendezvous sends once it is under load) and then, for --seconds, sends a
transport keepalive every 25 s and rekeys every 120 s, spread evenly over time, as WireGuard peers
with a persistent keepalive of 25 s do. Reported: the rendezvous's CPU share (its CPU seconds over
the wall-clock seconds) and resident memory, and the latency of DNS SRV queries (a separate
prober process, 20 queries a second) with the rendezvous idle and during the load.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.name
import loadgen
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.dns.naming import instance_name
from meshpeer.rendezvous import settings, wire
from meshpeer.rendezvous.initiator import HandshakeFailed, Initiator
from meshpeer.rendezvous.registry import Registry

BIN = Path(sys.executable).parent
WG_PORT, API_PORT, DNS_PORT = 51820, 51821, 5300
KEEPALIVE_S, REKEY_S = 25.0, 120.0
ZONE = "mesh.internal."


class Simulation:
    def __init__(self, keys: list[X25519PrivateKey], rendezvous_key: bytes) -> None:
        self.peers = [Initiator(key, rendezvous_key) for key in keys]
        self.sources = [_source(number) for number in range(len(keys))]
        self.pending: dict[int, int] = {}  # sender index -> peer number
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.sock.bind(("0.0.0.0", 40000))  # noqa: S104  (inside the benchmark's own namespace)
        self.sock.setblocking(False)
        self.target = ("127.0.0.1", WG_PORT)
        self.completed = self.cookies = self.keepalives = 0

    def send(self, number: int, datagram: bytes) -> None:
        control = [(socket.IPPROTO_IP, loadgen.IP_PKTINFO, self.sources[number])]
        try:
            self.sock.sendmsg([datagram], control, 0, self.target)
        except BlockingIOError:
            pass  # a full buffer is a lost packet; the peer retries as WireGuard would

    def initiate(self, number: int) -> None:
        datagram = self.peers[number].initiation(time.time())
        self.pending[struct.unpack_from("<I", datagram, 4)[0]] = number
        self.send(number, datagram)

    def keepalive(self, number: int) -> None:
        if self.peers[number].keys is not None:
            self.send(number, self.peers[number].keepalive())
            self.keepalives += 1

    def receive(self, wait_s: float) -> None:
        select.select([self.sock], [], [], wait_s)
        while True:
            try:
                reply = self.sock.recv(256)
            except BlockingIOError:
                return
            if len(reply) < 12:
                continue
            kind = reply[0]
            number = self.pending.pop(loadgen.receiver_of(reply), None)
            if number is None:
                continue
            try:
                self.peers[number].receive(reply)
            except HandshakeFailed:
                continue
            if kind == wire.MessageType.COOKIE_REPLY:
                self.cookies += 1
                self.initiate(number)  # again at once, now with mac2
            else:
                self.completed += 1
                self.keepalive(number)  # confirms the endpoint, as WireGuard's first data does

    def bootstrap(self, window: int = 64) -> float:
        """Every peer completes one handshake; returns the seconds it took."""
        started = time.monotonic()
        waiting = list(range(len(self.peers)))
        sent_at: dict[int, float] = {}
        while self.completed < len(self.peers):
            now = time.monotonic()
            while waiting and len(self.pending) < window:
                number = waiting.pop()
                sent_at[number] = now
                self.initiate(number)
            self.receive(0.005)
            for sender, number in list(self.pending.items()):
                if now - sent_at[number] > 2.0:  # lost: try again
                    del self.pending[sender]
                    waiting.append(number)
            if time.monotonic() - started > 600:
                raise SystemExit(f"only {self.completed} handshakes in 600 s")
        return time.monotonic() - started

    def steady(self, seconds: float) -> None:
        """Keepalives every 25 s and rekeys every 120 s per peer, spread evenly."""
        count = len(self.peers)
        order = list(range(count))
        random.shuffle(order)
        keepalive_due = rekey_due = 0.0
        keepalive_turn = rekey_turn = 0
        started = last = time.monotonic()
        while (now := time.monotonic()) - started < seconds:
            keepalive_due += (now - last) * count / KEEPALIVE_S
            rekey_due += (now - last) * count / REKEY_S
            last = now
            while keepalive_due >= 1:
                self.keepalive(order[keepalive_turn % count])
                keepalive_turn += 1
                keepalive_due -= 1
            while rekey_due >= 1:
                self.initiate(order[(rekey_turn + count // 2) % count])
                rekey_turn += 1
                rekey_due -= 1
            self.receive(0.005)


def _source(number: int) -> bytes:
    return loadgen.pktinfo(f"127.{1 + number // 65536}.{number // 256 % 256}.{number % 256}")


def register(data_dir: Path, keys: list[X25519PrivateKey]) -> tuple[bytes, float]:
    async def run() -> tuple[bytes, float]:
        registry = await Registry.open(
            data_dir, settings.Overrides(network="10.64.0.0/10", public_endpoint="127.0.0.1:51820")
        )
        started = time.monotonic()
        try:
            entries = [(key.public_key().public_bytes_raw(), f"p{n}") for n, key in enumerate(keys)]
            for first in range(0, len(entries), 10_000):
                await registry.add_peers(entries[first : first + 10_000])
            return registry.public_key, time.monotonic() - started
        finally:
            await registry.close()

    return asyncio.run(run())


PROBE = """
import socket, sys, time, random
import dns.message
names = sys.argv[2:]
port = int(sys.argv[1])
client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client.settimeout(1)
for line in sys.stdin:
    samples = []
    for _ in range(int(line)):
        query = dns.message.make_query(random.choice(names), "SRV").to_wire()
        started = time.perf_counter()
        client.sendto(query, ("127.0.0.1", port))
        try:
            client.recv(4096)
            samples.append(time.perf_counter() - started)
        except OSError:
            samples.append(1.0)
        time.sleep(0.05)
    samples.sort()
    print(samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6, flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--smoke", action="store_true", help="200 peers for 3 s: for the tests")
    args = parser.parse_args()
    if args.smoke:
        args.peers, args.seconds = 200, 3.0
    print(loadgen.machine())
    keys = [X25519PrivateKey.generate() for _ in range(args.peers)]
    with tempfile.TemporaryDirectory() as scratch, loadgen.private_namespace():
        data_dir = Path(scratch)
        rendezvous_key, registering = register(data_dir, keys)
        listen = f"127.0.0.1:{WG_PORT}"
        command = [str(BIN / "rendezvous"), "serve", "--data-dir", str(data_dir)]
        command += ["--wg-listen", listen, "--public-endpoint", listen, "--log-level", "warning"]
        command += [
            "--api-listen",
            f"127.0.0.1:{API_PORT}",
            "--dns-listen",
            f"127.0.0.1:{DNS_PORT}",
        ]
        server = subprocess.Popen(
            loadgen.pinned(loadgen.SERVER_CORE, command), stderr=subprocess.DEVNULL
        )
        loadgen.pin(loadgen.LOAD_CORE)
        names = [
            instance_name(key.public_key().public_bytes_raw(), dns.name.from_text(ZONE)).to_text()
            for key in random.sample(keys, min(len(keys), 200))
        ]
        prober = subprocess.Popen(
            loadgen.pinned(loadgen.LOAD_CORE, [sys.executable, "-c", PROBE, str(DNS_PORT), *names]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(2.0 if args.smoke else 5.0)  # the server loads its peers
            simulation = Simulation(keys, rendezvous_key)
            booted = simulation.bootstrap()
            idle = probe(prober, 100)
            before = loadgen.cpu_seconds(server.pid)
            started = time.monotonic()
            ask(prober, max(int(args.seconds * 20 * 0.8), 20))  # answered while the load runs
            simulation.steady(args.seconds)
            elapsed = time.monotonic() - started
            share = (loadgen.cpu_seconds(server.pid) - before) / elapsed
            memory = loadgen.rss_bytes(server.pid)
            loaded = answer(prober)
        finally:
            prober.kill()
            server.terminate()
            server.wait(20)
    rates = (args.peers / KEEPALIVE_S, args.peers / REKEY_S)
    print(
        f"{args.peers:,} peers registered in {registering:.1f} s; all handshaken in {booted:.1f} s"
    )
    print(
        f"steady state for {elapsed:.0f} s: {rates[0]:,.0f} keepalives/s and {rates[1]:,.0f} "
        f"rekeys/s offered; {simulation.keepalives:,} keepalives sent, {simulation.completed:,} "
        f"handshakes completed in all, {simulation.cookies:,} cookie replies"
    )
    print(
        f"rendezvous: CPU share {share:.2f} of one core (goal: under 0.5), resident memory "
        f"{memory / 2**20:,.0f} MiB (goal: under 1,024)"
    )
    print(
        f"DNS SRV latency: idle p50 {idle[0]:.0f} us, p99 {idle[1]:.0f} us; during the load "
        f"p50 {loaded[0]:.0f} us, p99 {loaded[1]:.0f} us"
    )


def ask(prober: subprocess.Popen[str], count: int) -> None:
    """Has the prober time `count` queries, 20 a second."""
    if prober.stdin is None:
        raise SystemExit("the DNS prober has no input")
    prober.stdin.write(f"{count}\n")
    prober.stdin.flush()


def answer(prober: subprocess.Popen[str]) -> list[float]:
    """The prober's p50 and p99 in microseconds."""
    line = prober.stdout.readline() if prober.stdout else ""
    if not line:
        raise SystemExit("the DNS prober stopped")
    return [float(value) for value in line.split()]


def probe(prober: subprocess.Popen[str], count: int) -> list[float]:
    ask(prober, count)
    return answer(prober)


if __name__ == "__main__":
    main()
