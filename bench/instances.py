"""Two rendezvous registries on one database: joins per second through one, and how long each
join takes to reach the other's peers (what its DNS zone and watchers publish).

    .venv/bin/python bench/instances.py [--joins 200] [--smoke]

PostgreSQL: a private cluster (Debian's postgresql 15, as the tests start it: tests/pgcluster.py),
two instances with their own data folders; the second hears of each commit by LISTEN/NOTIFY.
SQLite beside it: two registries on one data folder, the second following by its 50 ms poll
(what a CLI write waits for today). Joins are signed and go one after another through the first
instance; the delay is from a join's answer (committed) to the second's publishing the peer.
Not a test: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshpeer.rendezvous import settings as config
from meshpeer.rendezvous.model import Peer
from meshpeer.rendezvous.registry import Registry
from tests.joining import Joiner
from tests.pgcluster import Cluster, private_cluster

from loadgen import machine

SERVED = config.Overrides(network="10.64.0.0/16", public_endpoint="192.0.2.10:51820")


async def measure(first: Registry, second: Registry, joins: int) -> tuple[float, list[float]]:
    """(joins a second through `first`, seconds from each join's answer to `second` having it)."""
    arrived: dict[str, float] = {}
    all_arrived = asyncio.Event()

    def on_change(kind: str, peer: Peer) -> None:
        arrived.setdefault(peer.name, time.monotonic())
        if len(arrived) == joins:
            all_arrived.set()

    second.subscribe(on_change)
    token = await first.create_token(uses=joins, lifetime_s=3600)
    answered: dict[str, float] = {}
    started = time.monotonic()
    for number in range(joins):
        joiner = Joiner(f"peer{number}")
        await first.join(joiner.request(token, first.public_key))
        answered[joiner.name] = time.monotonic()
    rate = joins / (time.monotonic() - started)
    with contextlib.suppress(TimeoutError):  # the report says how many arrived
        await asyncio.wait_for(all_arrived.wait(), 10.0)
    return rate, [arrived[name] - answered[name] for name in answered if name in arrived]


async def on_postgresql(cluster: Cluster, root: Path, joins: int) -> tuple[float, list[float]]:
    url = await cluster.new_database()
    first = await Registry.open(root / "pg-first", SERVED, database=url)
    (root / "pg-second").mkdir(mode=0o700)
    for name in ("tls.crt", "tls.key"):  # as the README says to start a second instance
        shutil.copy2(root / "pg-first" / name, root / "pg-second" / name)
    second = await Registry.open(root / "pg-second", SERVED, database=url)
    return await _both(first, second, joins)


async def on_sqlite(root: Path, joins: int) -> tuple[float, list[float]]:
    first = await Registry.open(root / "sqlite", SERVED)
    second = await Registry.open(root / "sqlite")
    return await _both(first, second, joins)


async def _both(first: Registry, second: Registry, joins: int) -> tuple[float, list[float]]:
    second.start_background()
    try:
        return await measure(first, second, joins)
    finally:
        await first.close()
        await second.close()


def report(engine: str, rate: float, delays: list[float], joins: int) -> None:
    ms = sorted(delay * 1000 for delay in delays)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"{engine:<11} {rate:7.0f} joins/s   delay to the other instance: "
        f"p50 {statistics.median(ms):6.1f} ms  p99 {p99:6.1f} ms  max {ms[-1]:6.1f} ms  "
        f"({len(ms)} of {joins} arrived)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="10 joins: for the tests")
    options = parser.parse_args()
    joins = 10 if options.smoke else options.joins
    print(machine())
    root = Path(tempfile.mkdtemp(prefix="meshpeer-instances-"))
    try:
        with private_cluster() as cluster:
            report("postgresql", *asyncio.run(on_postgresql(cluster, root, joins)), joins)
            report("sqlite", *asyncio.run(on_sqlite(root, joins)), joins)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
