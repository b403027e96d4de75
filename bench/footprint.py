"""The agent's footprint: resident memory and idle CPU of `meshpeer run` in a formed 4-peer mesh.

    .venv/bin/python bench/footprint.py [--peers 4] [--seconds 60] [--smoke]
    .venv/bin/python bench/footprint.py --imports

A lab of a rendezvous and N agents behind port-restricted NATs. Once all pairs have handshakes,
the mesh is left alone for --seconds (keepalives, the watch and mDNS go on; DNS-SD is read only
while a path is down) and
each agent's process is measured: resident memory at the end, and CPU seconds over wall-clock
seconds. wireguard-go (the userspace WireGuard here, a child of the agent) is reported apart,
since with kernel WireGuard it does not exist.

Resident memory is split in two (/proc/PID/smaps_rollup): anonymous pages, the process's own
(Python's objects: the imported modules' code, classes and strings, then the agent's state),
and pages of mapped files (libpython, the shared libraries, extension modules), which every
process mapping the same file shares and the kernel can drop and read again. The largest
mappings of the median agent follow.

--imports needs no lab: what each library the agent loads adds to a fresh interpreter's
resident memory when it is imported last, after all the others (so what is shared, such as
asyncio, counts once, in the interpreter's line); then what loads only on use (dnspython), and
the join process (cryptography), which lives for the join alone.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.lab

from tests.lab import Lab

import loadgen
from convergence import all_pairs, build, wait


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def process_name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def anonymous_bytes(pid: int) -> int:
    """The resident pages of a process that are its own (no file behind them)."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    found = re.search(r"^Anonymous:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else 0


def largest_mappings(pid: int, count: int = 8) -> list[tuple[str, int]]:
    """Resident bytes by mapped file ([heap], and [anonymous] for all other such mappings)."""
    resident: Counter[str] = Counter()
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+$", fields[0]):
            name = Path(fields[5]).name if len(fields) > 5 else "[anonymous]"
        elif fields[0] == "Rss:":
            resident[name] += int(fields[1]) * 1024
    return resident.most_common(count)


# What `meshpeer run` imports, by library: each group is what the agent's modules name.
LIBRARIES = {
    "h11": ["h11"],
    "pyroute2": ["pyroute2", "pyroute2.netlink.exceptions"],
    "zeroconf": ["zeroconf.asyncio"],
    "meshpeer's own modules": ["meshpeer.peer.cli"],
}
# Loaded by a running agent only when needed: DNS-SD is read while a path is down and the
# watch does not answer.
ON_USE = {"dnspython, for DNS-SD while the watch fails": ["meshpeer.peer.dnssd"]}
# The process that makes the key and joins (joining.py): cryptography, for a second or so.
JOIN_PROCESS = ["meshpeer.peer.joining"]
OURS = "meshpeer's own modules"
INTERPRETER = ["asyncio", "ssl", "argparse", "json", "logging"]
_MEASURE = """
import importlib, sys
def resident():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
for name in sys.argv[1].split(","):
    importlib.import_module(name)
before, modules = resident(), len(sys.modules)
for name in sys.argv[2].split(","):
    importlib.import_module(name)
print(before, resident(), len(sys.modules) - modules)
"""


def import_cost(first: list[str], last: list[str]) -> tuple[float, float, int]:
    """Resident MiB before and after importing `last` after `first`, in a fresh interpreter,
    and how many modules `last` added."""
    command = [sys.executable, "-c", _MEASURE, ",".join(first), ",".join(last)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    before, after, modules = (int(field) for field in output.split())
    return before / 1024, after / 1024, modules


def imports() -> None:
    """Each library's share of an idle agent's memory, as far as importing it goes."""
    print(loadgen.machine())
    _, bare, _ = import_cost(["sys"], ["sys"])
    _, interpreter, modules = import_cost(["sys"], INTERPRETER)
    print(f"  {bare:5.1f} MiB  the interpreter alone")
    counted = interpreter
    print(f"  {interpreter - bare:+5.1f} MiB  {', '.join(INTERPRETER)} ({modules} modules)")
    for library, names in LIBRARIES.items():
        # meshpeer's modules import every library: they come last, after all of them.
        others = [
            name
            for other, group in LIBRARIES.items()
            if other not in (library, OURS)
            for name in group
        ]
        before, after, modules = import_cost(INTERPRETER + others, names)
        print(f"  {after - before:+5.1f} MiB  {library} ({modules} modules)")
        counted += after - before
    _, total, modules = import_cost(["sys"], ["meshpeer.peer.cli"])
    print(f"  {total - counted:+5.1f} MiB  imported by two or more of them (ctypes, uuid, ...)")
    print(f"  {total:5.1f} MiB  after importing meshpeer's command line ({modules} modules)")
    for what, names in ON_USE.items():
        before, after, modules = import_cost(["meshpeer.peer.cli"], names)
        print(f"  {after - before:+5.1f} MiB  on use: {what} ({modules} modules)")
    _, joining, modules = import_cost(["sys"], JOIN_PROCESS)
    print(f"  {joining:5.1f} MiB  the join process, at start only ({modules} modules)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--smoke", action="store_true", help="2 peers for 3 s: for the tests")
    parser.add_argument("--imports", action="store_true", help="each library's import cost; no lab")
    args = parser.parse_args()
    if args.imports:
        imports()
        return
    if args.smoke:
        args.peers, args.seconds = 2, 3.0
    print(loadgen.machine())
    with Lab() as lab:
        token, agents, _ = build(lab, args.peers)
        for agent in agents:
            agent.start(token)
        wait(lambda: all_pairs(agents), "all pairs", agents)
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
                    anonymous_bytes(agent_pid) / 2**20,
                )
            )
        median_pid = pids[sorted(rows, key=lambda row: row[1])[len(rows) // 2][0]][0]
        mappings = largest_mappings(median_pid)
    print(f"{args.peers} agents, all pairs direct, then idle for {elapsed:.0f} s")
    for name, rss, cpu, wg_rss, wg_cpu, anonymous in rows:
        print(
            f"  {name}: meshpeer run {rss:5.1f} MiB ({anonymous:.1f} anonymous, "
            f"{rss - anonymous:.1f} mapped files), CPU {cpu:.2f} %; "
            f"wireguard-go {wg_rss:5.1f} MiB, CPU {wg_cpu:.2f} %"
        )
    print(
        f"  median: meshpeer run {statistics.median(r[1] for r in rows):.1f} MiB resident, "
        f"{statistics.median(r[2] for r in rows):.2f} % of one core idle"
    )
    print(
        "  largest mappings of the median agent: "
        + ", ".join(f"{name} {size / 2**20:.1f}" for name, size in mappings)
        + " (MiB)"
    )


if __name__ == "__main__":
    main()
