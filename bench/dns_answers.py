"""DNS answers of the rendezvous against NSD, at several zone sizes, in one run.

    .venv/bin/python bench/dns_answers.py [--peers 100,100000] [--seconds 5] [--rounds 3]
        [--churn 1] [--smoke]

For each zone size:
- core: the sans-I/O `Authority` alone, timed per query in this process: with its answer cache,
  without it (every query through the fast path, or declined to dnspython), and without the
  fast path either (dnspython parses and renders every query); median and 99th percentile of
  single answers, answers a second;
- wire: five servers in turn on core 0, each with Debian's `dnsperf` on core 1 for throughput
  and a closed-loop client (one query in flight) for the latency each query sees on loopback:
  ours (`DnsServer`, UDP) as it runs in production; the same while `--churn` % of the peers'
  endpoints move per minute (`Zone.put` from a task of its event loop, as the rendezvous does
  when it observes a new mapping); ours with the answer cache off (the fast path alone); ours
  with the cache and the fast path off (dnspython alone, the code before either); and NSD
  serving the very same records from a zone file (written from the zone's AXFR; static).
The query mix is what agents and people ask: SRV of an instance (70 %), A of a peer's name
(20 %), NXDOMAIN (9 %), the service PTR (1 %, truncated at scale). Rounds alternate between
the servers; figures are medians with min and max.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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
from dataclasses import dataclass, replace
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.rdatatype

from meshpeer.dns.naming import instance_name
from meshpeer.dns.ratelimit import ResponseRateLimiter
from meshpeer.dns.records import PeerEntry, Zone, ZoneConfig
from meshpeer.dns.server import ANSWER_CACHE_SIZE, Authority
from meshpeer.rendezvous.dnsserve import DnsServer

from loadgen import LOAD_CORE, SERVER_CORE, machine

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


def core(
    zone: Zone, queries: list[tuple[str, str]], rounds: int, cache: int, *, fast: bool
) -> dict[str, float]:
    authority = Authority(zone, ResponseRateLimiter(1e12), answer_cache=cache, fast_path=fast)
    wires = [dns.message.make_query(name, rdtype).to_wire() for name, rdtype in queries]
    for number, wire in enumerate(wires):  # untimed: the zone builds peers' records once
        authority.answer_udp(wire, f"10.0.{number % 256}.1", 0.0)
    authority = Authority(zone, ResponseRateLimiter(1e12), answer_cache=cache, fast_path=fast)
    gc.collect()  # the zone just built: its first full collection is no query's cost
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


@dataclass(frozen=True)
class Ours:
    """One configuration of our server."""

    cache: int = ANSWER_CACHE_SIZE
    fast: bool = True
    churn_percent: float = 0.0  # of the peers' endpoints moving a minute


def serve(peers: int, port: int, ours: Ours) -> None:
    """Child process: our real server on loopback, pinned to the server core."""
    os.sched_setaffinity(0, {SERVER_CORE})
    zone, _ = build_zone(peers)
    limiter = ResponseRateLimiter(1e12)

    async def run() -> None:
        authority = Authority(zone, limiter, answer_cache=ours.cache, fast_path=ours.fast)
        server = DnsServer(authority)
        await server.start("127.0.0.1", port)
        moves = peers * ours.churn_percent / 100 / 60  # a second
        churning = asyncio.create_task(churn(zone, moves)) if moves else None
        print("ready", flush=True)
        await asyncio.Event().wait()
        del churning

    asyncio.run(run())


async def churn(zone: Zone, moves_per_s: float) -> None:
    """Move random peers' endpoints (a new NAT port) at `moves_per_s`, through `Zone.put`,
    from the server's event loop: what the rendezvous does when a keepalive comes from a new
    mapping. Each move bumps the SOA serial, which the parent reads to count them."""
    entries = [entry for _, entry in zone.snapshot().entries]
    chance = random.Random(11)
    loop = asyncio.get_running_loop()
    started, moved = loop.time(), 0
    while True:
        await asyncio.sleep(0.05)
        due = int((loop.time() - started) * moves_per_s) - moved
        for _ in range(due):
            index = chance.randrange(len(entries))
            entry = entries[index]
            if entry.endpoint is None:  # every peer of build_zone has one
                continue
            host, port = entry.endpoint
            entries[index] = replace(entry, endpoint=(host, 1024 + (port - 1023) % 64000))
            zone.put(entries[index])
        moved += due


def start_ours(peers: int, port: int, ours: Ours) -> subprocess.Popen[str]:
    setup = [str(ours.cache), str(int(ours.fast)), str(ours.churn_percent)]
    command = [sys.executable, __file__, "--serve", str(peers), str(port), *setup]
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
    return soa_serial(port) is not None


def soa_serial(port: int) -> int | None:
    query = dns.message.make_query(ZONE, "SOA")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(0.2)
        for _ in range(10):  # the server is busy: let a lost answer be asked for again
            client.sendto(query.to_wire(), ("127.0.0.1", port))
            try:
                answer = dns.message.from_wire(client.recv(4096))
            except (OSError, dns.exception.DNSException):
                continue
            if answer.id == query.id and answer.answer:
                return int(answer.answer[0][0].serial)
        return None


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


CORE_SETUPS = {  # label: answer cache, fast path
    "with the answer cache": (ANSWER_CACHE_SIZE, True),
    "uncached, fast path": (0, True),
    "uncached, dnspython alone": (0, False),
}


def measure_core(zone: Zone, queries: list[tuple[str, str]], rounds: int) -> None:
    for label, (cache, fast) in CORE_SETUPS.items():
        figures = core(zone, queries, rounds, cache, fast=fast)
        print(
            f"         core, {label:<26} {figures['qps']:>9,.0f} q/s "
            f"(p50 {figures['p50_us']:.0f} us, p99 {figures['p99_us']:.0f} us)",
            flush=True,
        )


def servers_to_run(churn: float) -> dict[str, Ours]:
    return {
        "meshpeer": Ours(),
        f"meshpeer, {churn:g} %/min move": Ours(churn_percent=churn),
        "meshpeer, no cache": Ours(cache=0),
        "meshpeer, dnspython alone": Ours(cache=0, fast=False),
    }


def measure(peers: int, seconds: float, rounds: int, churn: float) -> dict[str, list[Sample]]:
    started = time.perf_counter()
    zone, queries = build_zone(peers)
    print(f"{peers:>7} peers (zone built in {time.perf_counter() - started:.1f} s)", flush=True)
    measure_core(zone, queries, rounds)
    results: dict[str, list[Sample]] = {}
    moves: list[float] = []
    ours = servers_to_run(churn)
    churning = next(name for name, setup in ours.items() if setup.churn_percent)
    with tempfile.TemporaryDirectory() as scratch:
        query_file = Path(scratch) / "queries"
        query_file.write_text("".join(f"{name} {rdtype}\n" for name, rdtype in queries))
        ports = {name: free_port() for name in [*ours, "NSD"]}
        servers = {name: start_ours(peers, ports[name], setup) for name, setup in ours.items()}
        servers["NSD"] = start_nsd(zone, ports["NSD"], Path(scratch))
        try:
            for _ in range(rounds):
                for name, port in ports.items():
                    before, began = soa_serial(port), time.perf_counter()
                    rate = dnsperf(port, str(query_file), seconds)  # also warms the cache
                    if name == churning and before is not None:
                        moved = (soa_serial(port) or before) - before
                        moves.append(moved / (time.perf_counter() - began))
                    latency = wire_latency(port, queries, 2000 if seconds > 1 else 200)
                    results.setdefault(name, []).append(
                        (rate, latency["p50_us"], latency["p99_us"])
                    )
        finally:
            for child in servers.values():
                child.terminate()
                child.wait(10)
    report(results, churning, moves, peers * churn / 100 / 60)
    return results


def report(
    results: dict[str, list[Sample]], churning: str, moves: list[float], asked: float
) -> None:
    for name, samples in results.items():
        rates = [rate for rate, _, _ in samples]
        p50 = statistics.median(p for _, p, _ in samples)
        p99 = statistics.median(p for _, _, p in samples)
        print(
            f"         {name:<29} {statistics.median(rates):>9,.0f} q/s by dnsperf "
            f"(min {min(rates):,.0f}, max {max(rates):,.0f}); latency p50 {p50:.0f} us, "
            f"p99 {p99:.0f} us",
            flush=True,
        )
    rate = {name: statistics.median(r for r, _, _ in samples) for name, samples in results.items()}
    nsd = rate["NSD"]
    print(
        f"         endpoints moved {statistics.median(moves or [0.0]):.1f}/s during dnsperf "
        f"(asked for {asked:.1f}/s)",
        flush=True,
    )
    print(
        f"         ratio meshpeer / NSD {rate['meshpeer'] / nsd:.2f} (goal: at least 0.25); "
        f"under churn {rate[churning] / nsd:.2f}; without the cache "
        f"{rate['meshpeer, no cache'] / nsd:.2f}, dnspython alone "
        f"{rate['meshpeer, dnspython alone'] / nsd:.3f}; fast path / dnspython "
        f"{rate['meshpeer, no cache'] / rate['meshpeer, dnspython alone']:.1f}x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="100,100000")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--churn", type=float, default=1.0, help="%% of endpoints moving a minute")
    parser.add_argument("--smoke", action="store_true", help="tiny and quick: for the tests")
    parser.add_argument("--serve", nargs=5, metavar=("PEERS", "PORT", "CACHE", "FAST", "CHURN"))
    args = parser.parse_args()
    if args.serve:
        peers, port, cache, fast, churn = args.serve
        serve(int(peers), int(port), Ours(int(cache), fast == "1", float(churn)))
        return
    sizes = [100] if args.smoke else [int(size) for size in args.peers.split(",")]
    seconds, rounds = (1, 1) if args.smoke else (args.seconds, args.rounds)
    if shutil.which("dnsperf") is None:
        raise SystemExit("dnsperf is missing: run `bash tests/setup` (it installs it)")
    print(machine())
    print(f"servers on core {SERVER_CORE}, dnsperf (-c 4 -q 200) on core {LOAD_CORE}")
    for peers in sizes:
        measure(peers, seconds, rounds, args.churn)


if __name__ == "__main__":
    main()
