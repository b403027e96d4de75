"""DNS answers: queries a second on one core, and latency, at several zone sizes.

    .venv/bin/python bench/dns_answers.py [--peers 100,100000] [--seconds 10] [--smoke]

For each zone size, in one run:
- core: the sans-I/O `Authority` alone, timed per query in this process (median and 99th
  percentile of single answers, and answers a second);
- wire: the real server (`DnsServer`, UDP) in a child process pinned to one core, with Debian's
  `dnsperf` on the other core for throughput, and a closed-loop Python client (one query in flight)
  for the latency each query sees on loopback.
The query mix is what agents and people ask: SRV of an instance (70 %), A of a peer's name
(20 %), NXDOMAIN (9 %), the service PTR (1 %, truncated at scale).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.name

from meshpeer.dns.naming import instance_name
from meshpeer.dns.ratelimit import ResponseRateLimiter
from meshpeer.dns.records import PeerEntry, Zone, ZoneConfig
from meshpeer.dns.server import Authority, DnsServer

ZONE = dns.name.from_text("mesh.internal.")
SERVICE = "_wireguard._udp.mesh.internal."


def build_zone(peers: int, seed: int = 7) -> tuple[Zone, list[tuple[str, str]]]:
    """A zone of `peers` peers with endpoints, and a query mix over them."""
    chance = random.Random(seed)
    zone = Zone(ZoneConfig(ZONE, 0, "127.0.0.1", "10.64.0.1"))
    names: list[tuple[str, str]] = []
    for index in range(peers):
        key = chance.randbytes(32)
        address = f"10.{64 + index // 65536}.{index // 256 % 256}.{index % 256}"
        endpoint = (f"198.51.{index // 256 % 256}.{index % 256}", 1024 + index % 60000)
        zone.put(PeerEntry(key, f"p{index}", address, (f"{address}/32",), endpoint))
        names.append((instance_name(key, ZONE).to_text(), f"p{index}.mesh.internal."))
    queries: list[tuple[str, str]] = []
    for _ in range(2000):
        instance, mesh_name = chance.choice(names)
        roll = chance.random()
        if roll < 0.70:
            queries.append((instance, "SRV"))
        elif roll < 0.90:
            queries.append((mesh_name, "A"))
        elif roll < 0.99:
            queries.append((f"nobody{chance.randrange(10**6)}.mesh.internal.", "A"))
        else:
            queries.append((SERVICE, "PTR"))
    return zone, queries


def core(zone: Zone, queries: list[tuple[str, str]], rounds: int) -> dict[str, float]:
    authority = Authority(zone, ResponseRateLimiter(1e12))
    wires = [dns.message.make_query(name, rdtype).to_wire() for name, rdtype in queries]
    samples: list[float] = []
    for _ in range(rounds):
        for number, wire in enumerate(wires):
            started = time.perf_counter()
            authority.answer_udp(wire, f"10.0.{number % 256}.1", 0.0)
            samples.append(time.perf_counter() - started)
    samples.sort()
    return {
        "qps": len(samples) / sum(samples),
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
    }


def serve(peers: int, port: int) -> None:
    """Child process: the real server on loopback, pinned to the first core."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    zone, _ = build_zone(peers)

    async def run() -> None:
        server = DnsServer(Authority(zone, ResponseRateLimiter(1e12)))
        await server.start("127.0.0.1", port)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


def wire_latency(port: int, queries: list[tuple[str, str]], count: int) -> dict[str, float]:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2)
    samples: list[float] = []
    for name, rdtype in (queries * (count // len(queries) + 1))[:count]:
        wire = dns.message.make_query(name, rdtype).to_wire()
        started = time.perf_counter()
        client.sendto(wire, ("127.0.0.1", port))
        client.recv(65535)
        samples.append(time.perf_counter() - started)
    client.close()
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
    }


def dnsperf(port: int, queries: list[tuple[str, str]], seconds: int) -> float:
    if shutil.which("dnsperf") is None:
        raise SystemExit("dnsperf is missing: run `bash tests/setup` (it installs it)")
    with tempfile.NamedTemporaryFile("w", suffix=".queries", delete=False) as file:
        file.writelines(f"{name} {rdtype}\n" for name, rdtype in queries)
    cores = sorted(os.sched_getaffinity(0))
    command = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", file.name]
    command += ["-l", str(seconds), "-c", "4", "-q", "200"]
    if len(cores) > 1:
        command = ["taskset", "-c", str(cores[-1]), *command]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    Path(file.name).unlink()
    found = re.search(r"Queries per second:\s+([\d.]+)", output)
    if not found:
        raise SystemExit(f"dnsperf printed no rate:\n{output}")
    return float(found.group(1))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def measure(peers: int, seconds: int, rounds: int) -> None:
    started = time.perf_counter()
    zone, queries = build_zone(peers)
    built = time.perf_counter() - started
    inside = core(zone, queries, rounds)
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(peers), str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if child.stdout is None or child.stdout.readline().strip() != "ready":
            raise SystemExit("the DNS server did not start")
        latency = wire_latency(port, queries, 2000 if seconds > 1 else 200)
        rate = dnsperf(port, queries, seconds)
    finally:
        child.terminate()
        child.wait(10)
    print(
        f"{peers:>7} peers (zone built in {built:.1f} s): "
        f"core {inside['qps']:,.0f} q/s, p50 {inside['p50_us']:.0f} us, "
        f"p99 {inside['p99_us']:.0f} us | "
        f"wire (UDP, one core) {rate:,.0f} q/s by dnsperf, "
        f"latency p50 {latency['p50_us']:.0f} us, p99 {latency['p99_us']:.0f} us",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="100,100000")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny and quick: for the tests")
    parser.add_argument("--serve", nargs=2, type=int, metavar=("PEERS", "PORT"))
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    sizes = [100] if args.smoke else [int(size) for size in args.peers.split(",")]
    seconds, rounds = (1, 1) if args.smoke else (args.seconds, args.rounds)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"machine: {machine}; server pinned to one core, dnsperf on another")
    for peers in sizes:
        measure(peers, seconds, rounds)


if __name__ == "__main__":
    main()
