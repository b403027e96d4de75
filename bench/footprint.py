"""The agent's footprint: resident memory and idle CPU of `meshpeer run` in a formed 4-peer mesh.

    .venv/bin/python bench/footprint.py [--peers 4] [--seconds 60] [--smoke]

A lab of a rendezvous and N agents behind port-restricted NATs. Once all pairs have handshakes,
the mesh is left alone for --seconds (keepalives, the watch, DNS-SD polls and mDNS go on) and
each agent's process is measured: resident memory at the end, and CPU seconds over wall-clock
seconds. wireguard-go (the userspace WireGuard here, a child of the agent) is reported apart,
since with kernel WireGuard it does not exist.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import loadgen
from convergence import all_pairs, build, wait

from tests.lab import Lab


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def process_name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--smoke", action="store_true", help="2 peers for 3 s: for the tests")
    args = parser.parse_args()
    if args.smoke:
        args.peers, args.seconds = 2, 3.0
    print(loadgen.machine())
    with Lab() as lab:
        token, agents, _ = build(lab, args.peers)
        for agent in agents:
            agent.start(token)
        wait(lambda: all_pairs(agents), "all pairs")
        time.sleep(min(5.0, args.seconds))  # past the start-up work
        pids = {}
        for agent in agents:
            assert agent.process is not None  # noqa: S101  (started just above)
            wireguard_go = [
                p for p in children(agent.process.pid) if "wireguard" in process_name(p)
            ]
            pids[agent.name] = (agent.process.pid, wireguard_go[0] if wireguard_go else None)
        before = {
            name: [loadgen.cpu_seconds(p) if p else 0.0 for p in pair]
            for name, pair in pids.items()
        }
        started = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - started
        rows = []
        for name, (agent_pid, wg_pid) in pids.items():
            agent_cpu = (loadgen.cpu_seconds(agent_pid) - before[name][0]) / elapsed
            wg_cpu = (loadgen.cpu_seconds(wg_pid) - before[name][1]) / elapsed if wg_pid else 0.0
            rows.append(
                (
                    name,
                    loadgen.rss_bytes(agent_pid) / 2**20,
                    agent_cpu * 100,
                    loadgen.rss_bytes(wg_pid) / 2**20 if wg_pid else 0.0,
                    wg_cpu * 100,
                )
            )
    print(f"{args.peers} agents, all pairs direct, then idle for {elapsed:.0f} s")
    for name, rss, cpu, wg_rss, wg_cpu in rows:
        print(
            f"  {name}: meshpeer run {rss:5.1f} MiB, CPU {cpu:.2f} %; "
            f"wireguard-go {wg_rss:5.1f} MiB, CPU {wg_cpu:.2f} %"
        )
    print(
        f"  median: meshpeer run {statistics.median(r[1] for r in rows):.1f} MiB resident, "
        f"{statistics.median(r[2] for r in rows):.2f} % of one core idle"
    )


if __name__ == "__main__":
    main()
