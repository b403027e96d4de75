"""How fast the mesh forms and heals: `meshpeer run` agents behind port-restricted NATs in the lab.

    .venv/bin/python bench/convergence.py [--runs 5] [--sizes 2,4,8] [--only CASES] [--smoke]

Each run builds a fresh lab (a public rendezvous, each agent behind its own port-restricted NAT)
and measures, with the real `rendezvous serve` and `meshpeer run`:
- all pairs: from starting N agents at once to every pair having a WireGuard handshake (read
  from each wireguard-go's UAPI socket every 10 ms), for each N in --sizes;
- new pair: for N = 2, from the second agent's registration (its membership file written) to
  the pair's handshake;
- join: a peer started into the formed mesh of 4 (or the largest size) until it has handshakes
  with all and all with it, from its start and from its registration;
- heal: with ping running over the tunnel (every 50 ms), one NAT forgets every mapping (as on a
  reboot); the time until pings get through again;
- roam: one of 3 agents, pinging the other two (every 50 ms), is moved to another NAT's LAN (its
  link deleted and made anew there: new address, new gateway, as a laptop carried to another
  network); the time until pings to both get through again;
- upgrade: two agents behind one hairpinning NAT, their mDNS dropped, go direct through its
  public address; from letting mDNS through until both say `lan` (`meshpeer status`, read every
  10 ms), and the longest gap in a ping running meanwhile (every 50 ms).
`--only` takes a comma-separated list of formation, heal, roam, upgrade (all by default).
Figures are medians and maxima over the runs. Not a test: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from loadgen import machine, uapi_exchange

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.lab

from meshpeer.peer import uapi
from meshpeer.peer.state import StateDir, StateError
from meshpeer.peer.timers import LAN_TRY_EVERY_S
from tests.lab import Lab, NatType, Router
from tests.lab.agents import MeshAgent
from tests.lab.mdns import hold_mdns
from tests.lab.rendezvous import RendezvousServer

POLL_S = 0.01
TIMEOUT_S = 60.0
LOG_LINES = 30  # of each agent's log, when a case times out


def handshaken_addresses(agent: MeshAgent) -> set[str]:
    """Mesh addresses of the peers this agent's WireGuard has a handshake with (via UAPI)."""
    control = agent.host.rundir / "wireguard" / "wg0.sock"
    try:
        device = uapi.parse_get(uapi_exchange(control, uapi.get_request()))
    except (OSError, uapi.UapiError):
        return set()
    found: set[str] = set()
    for peer in device.peers.values():
        if peer.latest_handshake:
            found.update(
                str(ipaddress.ip_network(cidr).network_address) for cidr in peer.allowed_ips
            )
    return found


def registered_at(agent: MeshAgent) -> float | None:
    with contextlib.suppress(OSError):
        return (agent.state_dir / "membership.json").stat().st_mtime
    return None


def mesh_address(agent: MeshAgent) -> str | None:
    with contextlib.suppress(OSError, StateError):
        membership = StateDir(agent.state_dir).membership()
        return membership.address if membership else None
    return None


def all_pairs(agents: list[MeshAgent]) -> bool:
    addresses = [mesh_address(agent) for agent in agents]
    if None in addresses:
        return False
    for agent, own in zip(agents, addresses, strict=True):
        if not {a for a in addresses if a != own} <= handshaken_addresses(agent):
            return False
    return True


def wait(
    predicate: Callable[[], bool],
    what: str,
    agents: Sequence[MeshAgent],
    timeout: float = TIMEOUT_S,
) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            explain(agents)
            raise SystemExit(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(POLL_S)
    return time.time()


def explain(agents: Sequence[MeshAgent]) -> None:
    """What each agent saw, on stderr: a case that timed out in CI is read from this alone."""
    for agent in agents:
        log = agent.output().splitlines()[-LOG_LINES:]
        print(f"--- {agent.name}: paths {agent.paths()}", *log, sep="\n", file=sys.stderr)


def build(lab: Lab, count: int) -> tuple[str, list[MeshAgent], list[Router]]:
    """A rendezvous, its token, and `count` agents (not started) each behind its own NAT."""
    server = RendezvousServer(lab.add_public_host("rendezvous")).start()
    token = server.token(count + 1)
    routers = [lab.add_nat(f"site{n}", NatType.PORT_RESTRICTED) for n in range(count)]
    agents = [MeshAgent(router.add_host(f"p{n}"), f"p{n}") for n, router in enumerate(routers)]
    return token, agents, routers


def formation(count: int, join: bool) -> dict[str, float]:
    """All-pairs time for `count` agents; with `join`, a late joiner's times as well."""
    figures: dict[str, float] = {}
    with Lab() as lab:
        token, agents, _ = build(lab, count)
        started = time.time()
        for agent in agents:
            agent.start(token)
        done = wait(lambda: all_pairs(agents), f"all pairs of {count}", agents)
        figures[f"all pairs, {count} peers"] = done - started
        if count == 2:
            second = max(registered_at(agent) or started for agent in agents)
            figures["new pair, from the 2nd registration"] = done - second
        if join:
            late_site = lab.add_nat("latesite", NatType.PORT_RESTRICTED)
            late = MeshAgent(late_site.add_host("late"), "late")
            started = time.time()
            late.start(token)
            everyone = [*agents, late]
            done = wait(lambda: all_pairs(everyone), "the late joiner's pairs", everyone)
            figures[f"join a mesh of {count}, from start"] = done - started
            figures[f"join a mesh of {count}, from registration"] = done - (
                registered_at(late) or started
            )
    return figures


def heal() -> float:
    """Seconds from a NAT dropping all its mappings until pings cross the tunnel again."""
    with Lab() as lab:
        token, agents, routers = build(lab, 2)
        for agent in agents:
            agent.start(token)
        wait(lambda: all_pairs(agents), "the pair", agents)
        first, second = agents
        target = mesh_address(second) or "unknown"
        pinger = first.host.spawn("ping", ["ping", "-D", "-n", "-i", "0.05", "-W", "1", target])
        wait(lambda: "bytes from" in pinger.output(), "the first ping", agents)
        time.sleep(0.5)
        reset = time.time()
        routers[0].reset_mappings()
        replies = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from", re.MULTILINE)

        def replied_after_reset() -> bool:
            return any(float(stamp) > reset + 0.2 for stamp in replies.findall(pinger.output()))

        wait(replied_after_reset, "pings after the NAT reset", agents)
        stamps = [float(stamp) for stamp in replies.findall(pinger.output())]
        pinger.stop()
        return min(stamp for stamp in stamps if stamp > reset + 0.2) - reset


REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from", re.MULTILINE)


def first_reply_after(output: str, moment: float) -> float | None:
    stamps = [float(stamp) for stamp in REPLY.findall(output) if float(stamp) > moment]
    return min(stamps) if stamps else None


def roam() -> float:
    """Seconds from a host's move to another NAT until pings to all its peers cross again."""
    with Lab() as lab:
        token, agents, _ = build(lab, 3)
        cafe = lab.add_nat("cafe", NatType.PORT_RESTRICTED)
        for agent in agents:
            agent.start(token)
        wait(lambda: all_pairs(agents), "all pairs", agents)
        mover, *others = agents
        pingers = []
        for other in others:
            target = mesh_address(other) or "unknown"
            command = ["ping", "-D", "-n", "-i", "0.05", "-W", "1", target]
            pingers.append(mover.host.spawn(f"ping-{other.name}", command))
        wait(lambda: all("bytes from" in p.output() for p in pingers), "the first pings", agents)
        time.sleep(0.5)
        moved = time.time()
        mover.host.move_to(cafe)

        def all_replied() -> bool:
            return all(first_reply_after(p.output(), moved + 0.2) for p in pingers)

        wait(all_replied, "pings after the move", agents)
        replies = [first_reply_after(p.output(), moved + 0.2) or moved for p in pingers]
        for pinger in pingers:
            pinger.stop()
        return max(replies) - moved


def upgrade() -> tuple[float, float]:
    """Seconds from letting mDNS through until a pair that went direct through its hairpinning
    NAT is on the LAN (both sides), and the longest gap in pings meanwhile."""
    with Lab() as lab:
        server = RendezvousServer(lab.add_public_host("rendezvous")).start()
        token = server.token(2)
        site = lab.add_nat("site", NatType.PORT_RESTRICTED, hairpin=True)
        agents = [MeshAgent(site.add_host(f"pc{n}"), f"pc{n}") for n in (0, 1)]
        for agent in agents:
            hold_mdns(agent.host, True)
            agent.start(token)
        wait(lambda: all(set(a.paths().values()) == {"direct"} for a in agents), "direct", agents)
        first, second = agents
        target = mesh_address(second) or "unknown"
        pinger = first.host.spawn("ping", ["ping", "-D", "-n", "-i", "0.05", "-W", "1", target])
        wait(lambda: "bytes from" in pinger.output(), "the first ping", agents)
        opened = time.time()
        for agent in agents:
            hold_mdns(agent.host, False)

        def on_lan() -> bool:
            return all(set(agent.paths().values()) == {"lan"} for agent in agents)

        # A LAN try that fails is made again LAN_TRY_EVERY_S later: the figures show such a run
        # (and its logs), and the run goes on to the end.
        done = wait(on_lan, "lan", agents, LAN_TRY_EVERY_S + TIMEOUT_S)
        if done - opened > LAN_TRY_EVERY_S:
            print(f"upgrade took {done - opened:.1f} s; the agents' logs:", file=sys.stderr)
            explain(agents)
        time.sleep(1.0)
        stamps = [float(stamp) for stamp in REPLY.findall(pinger.output()) if float(stamp) > opened]
        pinger.stop()
        gaps = [b - a for a, b in zip([opened, *stamps], stamps, strict=False)]
        return done - opened, max(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="2,4,8")
    parser.add_argument("--smoke", action="store_true", help="one run of 2 peers: for the tests")
    parser.add_argument("--only", default="formation,heal,roam,upgrade", help="the cases to run")
    args = parser.parse_args()
    cases = set(args.only.split(","))
    sizes = [2] if args.smoke else [int(size) for size in args.sizes.split(",")]
    runs = 1 if args.smoke else args.runs
    join_size = 2 if args.smoke else (4 if 4 in sizes else max(sizes))
    print(machine())
    print(f"{runs} runs; agents behind port-restricted NATs; wireguard-go; lab in namespaces")
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        for count in sizes if "formation" in cases else []:
            for name, value in formation(count, join=count == join_size).items():
                samples.setdefault(name, []).append(value)
        if "heal" in cases:
            samples.setdefault("heal after a NAT reset", []).append(heal())
        if "roam" in cases:
            samples.setdefault("roam to another NAT, all peers", []).append(roam())
        if "upgrade" in cases:
            on_lan, gap = upgrade()
            samples.setdefault("upgrade: mDNS opens, until both on lan", []).append(on_lan)
            samples.setdefault("upgrade: longest ping gap meanwhile", []).append(gap)
    for name, values in samples.items():
        print(
            f"  {name:<40} median {statistics.median(values):5.2f} s, max {max(values):5.2f} s "
            f"({', '.join(f'{v:.2f}' for v in values)})"
        )


if __name__ == "__main__":
    main()
