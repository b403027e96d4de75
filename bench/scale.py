"""One rendezvous and 100,000 simulated peers, on SQLite and on PostgreSQL side by side: the
rendezvous's CPU share, memory and DNS latency, and PostgreSQL's own processes' apart.

    .venv/bin/python bench/scale.py [--peers 100000] [--seconds 30] [--slice 5]
        [--engine sqlite,postgresql] [--pg-top N] [--smoke]

In a network namespace of the benchmark's own, `rendezvous serve` runs on core 0 with every peer
registered. With PostgreSQL its registry is a private cluster (tests/pgcluster.py: Debian's
postgresql 15 on a unix socket, removed at the end, also on Ctrl-C) with PostgreSQL's default
settings (fsync on, as SQLite's synchronous=FULL), its processes pinned to core 0 as well: the
server side of one host. The simulation (bench/scalepeers.py) runs on core 1: every peer
completes a handshake, then for --seconds keepalives every 25 s and rekeys every 120 s. Each
engine gets the same keys and the same load, one after the other in one run.

Reported per engine: the time to register the peers and for the server to come up, the first
handshakes (with the CPU seconds each side spent on them), the CPU share of one core (median of
--slice slices, with the range) and memory of the rendezvous (resident) and of PostgreSQL's
processes (PSS summed, so its shared buffers count once), and the latency of DNS SRV queries
(a separate prober process, 20 a second) idle and during the load, the time from SIGTERM to
exit (the last flush), and what the server logged as warnings. Then PostgreSQL / SQLite.
--pg-top N loads pg_stat_statements and prints PostgreSQL's N costliest statements while serving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import dns.name
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.dns.naming import instance_name
from meshpeer.rendezvous import settings
from meshpeer.rendezvous.datadir import DATABASE_NAME
from meshpeer.rendezvous.registry import Registry
from tests.pgcluster import NO_TCP, Cluster, private_cluster

import loadgen
from pgstatements import WITH_STATEMENTS, count_statements, top_statements
from scalepeers import WG_PORT, Simulation
from scalereport import Figures, report, report_ratios

BIN = Path(sys.executable).parent
API_PORT, DNS_PORT = 51821, 5300
ZONE = "mesh.internal."
ENGINES = ("sqlite", "postgresql")
SERVING_LINE = b"make a join token with"  # what serve prints once it listens
START_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 600.0
CALM_SHARE = 0.9  # the server side's CPU share under which its one core is not saturated


class CpuMeter:
    """The CPU share of one core of each named process tree, slice by slice."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots
        self._last = self._read()
        self.shares: dict[str, list[float]] = {name: [] for name in roots}

    def _read(self) -> tuple[float, dict[str, float]]:
        seconds = {name: loadgen.tree_cpu_seconds(pid) for name, pid in self.roots.items()}
        return time.monotonic(), seconds

    def mark(self) -> None:
        now, seconds = self._read()
        then, before = self._last
        for name in self.roots:
            self.shares[name].append((seconds[name] - before[name]) / (now - then))
        self._last = (now, seconds)

    def restart(self) -> dict[str, float]:
        """CPU seconds of each since the last mark or restart; the next slice starts now."""
        before = self._last[1]
        self._last = self._read()
        return {name: self._last[1][name] - before[name] for name in self.roots}


def register(
    data_dir: Path, keys: list[X25519PrivateKey], database: str | None
) -> tuple[bytes, float]:
    async def run() -> tuple[bytes, float]:
        overrides = settings.Overrides(network="10.64.0.0/10", public_endpoint="127.0.0.1:51820")
        registry = await Registry.open(data_dir, overrides, database=database)
        started = time.monotonic()
        try:
            entries = [(key.public_key().public_bytes_raw(), f"p{n}") for n, key in enumerate(keys)]
            for first in range(0, len(entries), 10_000):
                await registry.add_peers(entries[first : first + 10_000])
            return registry.public_key, time.monotonic() - started
        finally:
            await registry.close()

    return asyncio.run(run())


def serve(data_dir: Path, database: str | None, log: IO[bytes]) -> subprocess.Popen[bytes]:
    listen = f"127.0.0.1:{WG_PORT}"
    command = [str(BIN / "rendezvous"), "serve", "--data-dir", str(data_dir)]
    command += ["--wg-listen", listen, "--public-endpoint", listen, "--log-level", "warning"]
    command += ["--api-listen", f"127.0.0.1:{API_PORT}", "--dns-listen", f"127.0.0.1:{DNS_PORT}"]
    command += ["--database", database] if database else []
    return subprocess.Popen(loadgen.pinned(loadgen.SERVER_CORE, command), stderr=log)


def wait_serving(server: subprocess.Popen[bytes], log: Path) -> float:
    """Seconds until serve says it listens (its peers loaded, its zone built)."""
    started = time.monotonic()
    while SERVING_LINE not in log.read_bytes():
        if server.poll() is not None:
            raise SystemExit(f"rendezvous serve ended: {log.read_text().strip()[-2000:]}")
        if time.monotonic() - started > START_TIMEOUT_S:
            raise SystemExit(f"rendezvous serve did not start in {START_TIMEOUT_S:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


def run_engine(
    engine: str,
    keys: list[X25519PrivateKey],
    prober: subprocess.Popen[str],
    cluster: Cluster | None,
    args: argparse.Namespace,
) -> Figures:
    figures = Figures(engine)
    with tempfile.TemporaryDirectory() as scratch:
        data_dir, log = Path(scratch) / "data", Path(scratch) / "serve.log"
        database = asyncio.run(cluster.new_database()) if cluster else None
        rendezvous_key, figures.registering_s = register(data_dir, keys, database)
        if database and args.pg_top:
            asyncio.run(count_statements(database))
        with log.open("wb") as log_file:
            server = serve(data_dir, database, log_file)
        try:
            figures.serving_s = wait_serving(server, log)
            roots = {"rendezvous": server.pid}
            if cluster:
                roots["database"] = cluster.postmaster_pid()
            simulation, meter = Simulation(keys, rendezvous_key), CpuMeter(roots)
            counter = endpoint_counter(data_dir, database)
            drive(figures, simulation, meter, prober, counter, args)
        finally:
            figures.stopping_s = stop(server)
        figures.log_lines = log.read_text().splitlines()
        if database and args.pg_top:
            figures.statements = asyncio.run(top_statements(database, args.pg_top))
    return figures


def settle(simulation: Simulation, stored_endpoints: Callable[[], int]) -> float | None:
    """Seconds, under the steady load, until the store holds every peer's endpoint (the first
    handshakes' write-behind caught up); None if not within SETTLE_TIMEOUT_S."""
    started = time.monotonic()
    while stored_endpoints() < len(simulation.peers):
        if time.monotonic() - started > SETTLE_TIMEOUT_S:
            return None
        simulation.steady(0.25, 1.0, lambda: None)
    return time.monotonic() - started


def calm_down(simulation: Simulation, meter: CpuMeter) -> float | None:
    """Seconds, under the steady load, until two 1 s slices of the server side's CPU share (the
    rendezvous and its database) are both under CALM_SHARE and within 0.1 of each other: what
    the first handshakes left queued (on PostgreSQL, the follower reading back 100,000 changes)
    is done, so the steady state measured next is steady. None if not within SETTLE_TIMEOUT_S."""
    started = time.monotonic()
    shares: list[float] = []
    while len(shares) < 2 or max(shares[-2:]) >= CALM_SHARE or abs(shares[-1] - shares[-2]) > 0.1:
        if time.monotonic() - started > SETTLE_TIMEOUT_S:
            return None
        meter.restart()
        sliced = time.monotonic()
        simulation.steady(1.0, 1.0, lambda: None)
        shares.append(sum(meter.restart().values()) / (time.monotonic() - sliced))
    return time.monotonic() - started


def endpoint_counter(data_dir: Path, database: str | None) -> Callable[[], int]:
    """How many peers' endpoints the store holds, read apart from the server."""
    query = "SELECT count(*) FROM peers WHERE endpoint_host IS NOT NULL"

    async def on_postgresql(url: str) -> int:
        connection = await asyncpg.connect(url)
        try:
            return int(await connection.fetchval(query))
        finally:
            await connection.close()

    def on_sqlite() -> int:
        uri = f"file:{data_dir / DATABASE_NAME}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            return int(db.execute(query).fetchone()[0])

    return (lambda: asyncio.run(on_postgresql(database))) if database else on_sqlite


def stop(server: subprocess.Popen[bytes]) -> float | None:
    """Seconds from SIGTERM to exit (the last write-behind flush is in it), or None when it
    had to be killed."""
    started = time.monotonic()
    server.terminate()
    try:
        server.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        return None
    return time.monotonic() - started


def drive(
    figures: Figures,
    simulation: Simulation,
    meter: CpuMeter,
    prober: subprocess.Popen[str],
    stored_endpoints: Callable[[], int],
    args: argparse.Namespace,
) -> None:
    try:
        figures.handshaken_s = simulation.bootstrap()
        figures.handshake_cpu_s = meter.restart()
        figures.settling_s = settle(simulation, stored_endpoints)
        figures.calming_s = calm_down(simulation, meter)
        before = (simulation.keepalives, simulation.completed, simulation.cookies)
        figures.dns_idle = probe(prober, 100)
        started = time.monotonic()
        ask(prober, max(int(args.seconds * 20 * 0.8), 20))  # answered while the load runs
        meter.restart()
        simulation.steady(args.seconds, args.slice, meter.mark)
        figures.steady_s = time.monotonic() - started
        figures.cpu = meter.shares
        figures.rendezvous_rss = loadgen.rss_bytes(meter.roots["rendezvous"])
        if "database" in meter.roots:
            pss = loadgen.tree_pss_bytes(meter.roots["database"])
            figures.database_pss, figures.database_processes = pss
        figures.dns_loaded = answer(prober)
        figures.keepalives = simulation.keepalives - before[0]
        figures.handshakes = simulation.completed - before[1]
        figures.cookies = simulation.cookies - before[2]
    finally:
        simulation.close()


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


def start_prober(keys: list[X25519PrivateKey]) -> subprocess.Popen[str]:
    """The DNS prober on the load's core, asking about 200 of the peers."""
    zone = dns.name.from_text(ZONE)
    sample = random.sample(keys, min(len(keys), 200))
    names = [instance_name(key.public_key().public_bytes_raw(), zone).to_text() for key in sample]
    command = [sys.executable, "-c", PROBE, str(DNS_PORT), *names]
    return subprocess.Popen(
        loadgen.pinned(loadgen.LOAD_CORE, command),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
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


# -- the run -------------------------------------------------------------------------------------


def engines(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in ENGINES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {','.join(ENGINES)}")
    return chosen


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--slice", type=float, default=5.0, help="seconds per CPU reading")
    parser.add_argument("--engine", type=engines, default=list(ENGINES), help="sqlite,postgresql")
    parser.add_argument(
        "--pg-top", type=int, default=0, help="print PostgreSQL's N costliest statements"
    )
    parser.add_argument("--smoke", action="store_true", help="200 peers for 3 s: for the tests")
    args = parser.parse_args()
    if args.smoke:
        args.peers, args.seconds, args.slice = 200, 3.0, 1.0
    return args


def main() -> None:
    args = arguments()
    # A SIGTERM ends the run as Ctrl-C does: through the finally blocks that stop the
    # rendezvous and remove the namespace and the PostgreSQL cluster.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    print(loadgen.machine())
    loadgen.pin(loadgen.LOAD_CORE)  # registering too: the same core for both engines
    keys = [X25519PrivateKey.generate() for _ in range(args.peers)]
    results: dict[str, Figures] = {}
    with contextlib.ExitStack() as stack:
        cluster = None
        if "postgresql" in args.engine:
            options = f"{NO_TCP} {WITH_STATEMENTS}" if args.pg_top else NO_TCP
            cluster = stack.enter_context(private_cluster(options))
            for pid in loadgen.process_tree(cluster.postmaster_pid()):
                os.sched_setaffinity(pid, {loadgen.SERVER_CORE})  # its later backends inherit it
        stack.enter_context(loadgen.private_namespace())
        prober = start_prober(keys)
        stack.callback(prober.kill)
        for engine in args.engine:
            on_cluster = cluster if engine == "postgresql" else None
            results[engine] = run_engine(engine, keys, prober, on_cluster, args)
            report(results[engine], args.peers)
    if len(results) == len(ENGINES):
        report_ratios(results["sqlite"], results["postgresql"])


if __name__ == "__main__":
    main()
