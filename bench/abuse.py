"""How well the rendezvous keeps serving under abuse, at 50,000 peers (issue 13).

    .venv/bin/python bench/abuse.py [--peers 50000] [--probes 200] [--smoke]

One lab: the rendezvous (the real `rendezvous serve`, its data folder filled with --peers
peers first) on a public host, a stranger's host for the abuse (tests/lab/abuser.py), and a
friend's host that probes. For each phase (idle, then each abuse in turn) the friend measures
`/healthz` over HTTPS (a new connection each time, as a health check does) and a UDP DNS query,
--probes of each at 20 a second, and the rendezvous's log growth. Prints p50 and p99 per phase.
Goals: p99 under 50 ms under every abuse, and the log under 1 MB a minute. Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from loadgen import machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.lab

from tests.lab import Host, Lab
from tests.lab.process import LabProcess
from tests.lab.rendezvous import API_PORT, DNS_PORT, WG_PORT, RendezvousServer
from tests.lab.wait import wait_until

LAB = Path(__file__).resolve().parent.parent / "tests" / "lab"
ZONE = "mesh.internal"
PROBE = r"""
import json, socket, ssl, sys, time
import dns.message, dns.query
host, api_port, dns_port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
context = ssl._create_unverified_context()
health, answers, failures = [], [], 0
request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
for _ in range(count):
    started = time.perf_counter()
    try:
        with socket.create_connection((host, api_port), timeout=5) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(request)
                while tls.recv(4096):
                    pass
        health.append(time.perf_counter() - started)
    except OSError:
        failures += 1
    query = dns.message.make_query("ns.mesh.internal", "A")
    started = time.perf_counter()
    try:
        dns.query.udp(query, host, port=dns_port, timeout=5)
        answers.append(time.perf_counter() - started)
    except Exception:
        failures += 1
    time.sleep(0.05)
print(json.dumps({"health": health, "dns": answers, "failures": failures}))
"""
ABUSES = {
    "AXFR stall (4 clients)": ("axfr-stall", "{rv}", str(DNS_PORT), ZONE, "4"),
    "3,000 half-open HTTPS requests": ("slowloris", "{rv}", str(API_PORT), "3000"),
    "300 idle DNS-over-TCP connections": ("dns-idle", "{rv}", str(DNS_PORT), "300"),
    "endpoint flap (16 ports)": ("flap", "{rv}", str(WG_PORT), "{token}"),
    "full-list loop (one member)": ("snapshots", "{token}"),
    **{
        f"UDP flood: {kind}": ("udp-flood", "{rv}", str(WG_PORT), kind, "{token}")
        for kind in ("junk", "initiation", "transport", "full", "oversized")
    },
}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def probe(friend: Host, server: RendezvousServer, count: int) -> dict[str, object]:
    argv = [
        sys.executable,
        "-c",
        PROBE,
        str(server.host.address),
        str(API_PORT),
        str(DNS_PORT),
        str(count),
    ]
    result = friend.run(argv, timeout=count * 12 + 60)
    measured: dict[str, object] = json.loads(result.stdout)
    return measured


def phase(name: str, friend: Host, server: RendezvousServer, count: int) -> None:
    log = server.process.log_path if server.process else None
    before = log.stat().st_size if log else 0
    started = time.monotonic()
    measured = probe(friend, server, count)
    minutes = (time.monotonic() - started) / 60
    grown = ((log.stat().st_size if log else 0) - before) / minutes / 1e6
    health, answers = list(measured["health"]), list(measured["dns"])  # type: ignore[call-overload]
    print(
        f"  {name:<36} healthz p50 {percentile(health, 0.5) * 1e3:6.1f} ms  "
        f"p99 {percentile(health, 0.99) * 1e3:6.1f} ms   DNS p50 "
        f"{percentile(answers, 0.5) * 1e3:5.1f} ms  p99 {percentile(answers, 0.99) * 1e3:6.1f} ms"
        f"   failed {measured['failures']}   log {grown:.2f} MB/min",
        flush=True,
    )


def start_abuse(stranger: Host, server: RendezvousServer, argv: tuple[str, ...]) -> LabProcess:
    filled = [
        item.format(rv=server.host.address, token=server.token(1) if "{token}" in item else "")
        for item in argv
    ]
    process = stranger.spawn(f"abuser-{argv[0]}", [sys.executable, str(LAB / "abuser.py"), *filled])
    ready = wait_until(
        lambda: '"holding"' in process.output() or '"running"' in process.output(), 120
    )
    if not ready or not process.running():
        raise SystemExit(f"the {argv[0]} abuse did not start: {process.output()[-500:]}")
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=50_000)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="1,000 peers, 10 probes")
    parser.add_argument("--only", help="the phases whose names hold this text (and idle)")
    args = parser.parse_args()
    peers, probes = (1000, 10) if args.smoke else (args.peers, args.probes)
    print(machine())
    print(f"rendezvous with {peers} peers; {probes} probes of each kind per phase")
    with Lab() as lab:
        stranger = lab.add_public_host("stranger")
        public = lab.add_public_host("rendezvous")
        friend = lab.add_public_host("friend")
        server = RendezvousServer(public, "--dns-axfr-allow", f"{stranger.address}/32")
        endpoint = f"{public.address}:{WG_PORT}"
        populate = [
            sys.executable,
            str(LAB / "populate.py"),
            str(server.data_dir),
            str(peers),
            endpoint,
        ]
        public.run(populate, timeout=600)
        server.start(timeout_s=300)
        phase("idle", friend, server, probes)
        for name, argv in ABUSES.items():
            if args.only and args.only not in name:
                continue
            abuser = start_abuse(stranger, server, argv)
            try:
                phase(name, friend, server, probes)
            finally:
                abuser.stop()
    print("goal: p99 under 50 ms in every phase; log under 1 MB a minute")


if __name__ == "__main__":
    main()
