"""DNS answers of the rendezvous against NSD, at several zone sizes, in one run.

    .venv/bin/python bench/dns_answers.py [--peers 100,100000] [--seconds 5] [--rounds 3] [--smoke]

For each zone size:
- core: the sans-I/O `Authority` alone, timed per query in this process, with its answer cache
  and without it (median and 99th percentile of single answers, answers a second);
- wire: three servers in turn on core 0, each with Debian's `dnsperf` on core 1 for throughput
  and a closed-loop client (one query in flight) for the latency each query sees on loopback:
  ours (`DnsServer`, UDP), ours with the answer cache off (the code before the cache), and
  NSD serving the very same records from a zone file (written from the zone's AXFR).
The query mix is what agents and people ask: SRV of an instance (70 %), A of a peer's name
(20 %), NXDOMAIN (9 %), the service PTR (1 %, truncated at scale). Rounds alternate between
the servers; figures are medians with min and max.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.name
import dns.rdatatype
from loadgen import LOAD_CORE, SERVER_CORE, machine

from meshpeer.dns.naming import instance_name
from meshpeer.dns.ratelimit import ResponseRateLimiter
from meshpeer.dns.records import PeerEntry, Zone, ZoneConfig
from meshpeer.dns.server import ANSWER_CACHE_SIZE, Authority
from meshpeer.rendezvous.dnsserve import DnsServer

ZONE = dns.name.from_text("mesh.internal.")
SERVICE = "_wireguard._udp.mesh.internal."
NSD_MAX_RRSET = 65_000  # NSD keeps at most 65,535 records in one RRset


def build_zone(peers: int, seed: int = 7) -> tuple[Zone, list[tuple[str, str]]]:
    """A zone of `peers` peers with endpoints, and a query mix over them."""
    chance = random.Random(seed)
    zone = Zone(ZoneConfig(ZONE, 0, "127.0.0.1"))
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


def core(zone: Zone, queries: list[tuple[str, str]], rounds: int, cache: int) -> dict[str, float]:
    authority = Authority(zone, ResponseRateLimiter(1e12), answer_cache=cache)
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


def serve(peers: int, port: int, cache: int) -> None:
    """Child process: our real server on loopback, pinned to the server core."""
    os.sched_setaffinity(0, {SERVER_CORE})
    zone, _ = build_zone(peers)

    async def run() -> None:
        server = DnsServer(Authority(zone, ResponseRateLimiter(1e12), answer_cache=cache))
        await server.start("127.0.0.1", port)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


def start_ours(peers: int, port: int, cache: int) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--serve", str(peers), str(port), str(cache)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    if child.stdout is None or child.stdout.readline().strip() != "ready":
        raise SystemExit("our DNS server did not start")
    return child


def start_nsd(zone: Zone, port: int, folder: Path) -> subprocess.Popen[str]:
    """NSD on core 0 with the zone's records (its AXFR) in a zone file."""
    nsd = shutil.which("nsd") or "/usr/sbin/nsd"
    if not Path(nsd).exists():
        raise SystemExit("NSD is missing: run `bash tests/setup` (it installs it)")
    zone_file = folder / "zone"
    pointers = 0
    with zone_file.open("w") as out:
        for rrset in zone.transfer():
            if rrset.rdtype == dns.rdatatype.PTR and rrset.name == zone.service:
                pointers += 1
                if pointers > NSD_MAX_RRSET:
                    continue  # NSD refuses the whole zone past that; the answer is TC anyway
            out.write(rrset.to_text() + "\n")
    config = folder / "nsd.conf"
    config.write_text(
        f"""server:
    ip-address: 127.0.0.1@{port}
    port: {port}
    username: ""
    chroot: ""
    zonesdir: "{folder}"
    database: ""
    zonelistfile: "{folder}/zone.list"
    xfrdfile: "{folder}/xfrd.state"
    xfrdir: "{folder}"
    pidfile: "{folder}/nsd.pid"
    server-count: 1
    verbosity: 0
    hide-version: yes
    rrl-ratelimit: 0  # as ours in this benchmark: one client address would be limited at once
remote-control:
    control-enable: no
zone:
    name: "{ZONE}"
    zonefile: "{zone_file}"
"""
    )
    command = ["taskset", "-c", str(SERVER_CORE), nsd, "-d", "-c", str(config)]
    log = folder / "nsd.log"  # a file, not a pipe: NSD warns per record and would block
    with log.open("w") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not answers(port):
        if child.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"NSD did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return child


def answers(port: int) -> bool:
    query = dns.message.make_query(ZONE, "SOA").to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(0.2)
        client.sendto(query, ("127.0.0.1", port))
        try:
            return len(client.recv(4096)) > 12
        except OSError:
            return False


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


def dnsperf(port: int, query_file: str, seconds: float) -> float:
    command = ["taskset", "-c", str(LOAD_CORE), "dnsperf", "-s", "127.0.0.1", "-p", str(port)]
    command += ["-d", query_file, "-l", str(seconds), "-c", "4", "-q", "200"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    found = re.search(r"Queries per second:\s+([\d.]+)", output)
    codes = re.search(r"Response codes:\s+(.*)", output)
    if not found or not codes:
        raise SystemExit(f"dnsperf printed no rate:\n{output}")
    if "SERVFAIL" in codes.group(1) or "FORMERR" in codes.group(1):
        raise SystemExit(f"port {port} answered badly: {codes.group(1)}")
    return float(found.group(1))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


Sample = tuple[float, float, float]  # q/s, latency p50 us, latency p99 us


def measure(peers: int, seconds: float, rounds: int) -> dict[str, list[Sample]]:
    started = time.perf_counter()
    zone, queries = build_zone(peers)
    built = time.perf_counter() - started
    cached = core(zone, queries, rounds, ANSWER_CACHE_SIZE)
    cold = core(zone, queries, rounds, 0)
    print(
        f"{peers:>7} peers (zone built in {built:.1f} s), core: "
        f"{cold['qps']:,.0f} q/s uncached (p50 {cold['p50_us']:.0f} us, "
        f"p99 {cold['p99_us']:.0f} us), {cached['qps']:,.0f} q/s with the answer cache "
        f"(p50 {cached['p50_us']:.0f} us, p99 {cached['p99_us']:.0f} us)",
        flush=True,
    )
    results: dict[str, list[Sample]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        query_file = Path(scratch) / "queries"
        query_file.write_text("".join(f"{name} {rdtype}\n" for name, rdtype in queries))
        ports = {name: free_port() for name in ("meshpeer", "meshpeer, no cache", "NSD")}
        servers = {
            "meshpeer": start_ours(peers, ports["meshpeer"], ANSWER_CACHE_SIZE),
            "meshpeer, no cache": start_ours(peers, ports["meshpeer, no cache"], 0),
            "NSD": start_nsd(zone, ports["NSD"], Path(scratch)),
        }
        try:
            for _ in range(rounds):
                for name, port in ports.items():
                    rate = dnsperf(port, str(query_file), seconds)  # also warms the cache
                    latency = wire_latency(port, queries, 2000 if seconds > 1 else 200)
                    results.setdefault(name, []).append(
                        (rate, latency["p50_us"], latency["p99_us"])
                    )
        finally:
            for child in servers.values():
                child.terminate()
                child.wait(10)
    for name, samples in results.items():
        rates = [rate for rate, _, _ in samples]
        p50 = statistics.median(p for _, p, _ in samples)
        p99 = statistics.median(p for _, _, p in samples)
        print(
            f"         {name:<19} {statistics.median(rates):>9,.0f} q/s by dnsperf "
            f"(min {min(rates):,.0f}, max {max(rates):,.0f}); latency p50 {p50:.0f} us, "
            f"p99 {p99:.0f} us",
            flush=True,
        )
    ours = statistics.median(rate for rate, _, _ in results["meshpeer"])
    before = statistics.median(rate for rate, _, _ in results["meshpeer, no cache"])
    nsd = statistics.median(rate for rate, _, _ in results["NSD"])
    print(
        f"         ratio meshpeer / NSD {ours / nsd:.2f} (goal: at least 0.25); "
        f"with / without the cache {ours / before:.1f}x",
        flush=True,
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="100,100000")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny and quick: for the tests")
    parser.add_argument("--serve", nargs=3, type=int, metavar=("PEERS", "PORT", "CACHE"))
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    sizes = [100] if args.smoke else [int(size) for size in args.peers.split(",")]
    seconds, rounds = (1, 1) if args.smoke else (args.seconds, args.rounds)
    if shutil.which("dnsperf") is None:
        raise SystemExit("dnsperf is missing: run `bash tests/setup` (it installs it)")
    print(machine())
    print(f"servers on core {SERVER_CORE}, dnsperf (-c 4 -q 200) on core {LOAD_CORE}")
    for peers in sizes:
        measure(peers, seconds, rounds)


if __name__ == "__main__":
    main()
