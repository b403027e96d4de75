"""The one-machine demo: a rendezvous on a public host and three peers behind three kinds of NAT,
all in network namespaces, driven through the real `rendezvous` and `meshpeer` commands.

    bash tests/demo          (sets up first; as root)

It prints what each step runs and shows, then removes everything it made. Exit 0 when all three
pairs are direct and every peer pings every other over the mesh; 1 otherwise; 2 when it cannot
run here (not root, a tool missing).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
from types import FrameType

from .agents import MESHPEER, MeshAgent, all_direct
from .nat import NatType
from .rendezvous import RendezvousServer
from .topology import Host, Lab
from .wait import wait_until

MESH_TIMEOUT_S = 30
TOOLS = ("ip", "nft", "conntrack", "wireguard-go", "ping", "dig")


def main() -> int:
    problem = _cannot_run()
    if problem:
        print(f"demo: error: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Lab() as lab:
            ok = _demo(lab)
            _section(
                "Cleaning up: agents stopped (each removes wg0), rendezvous stopped, lab removed"
            )
    except KeyboardInterrupt:
        print("\ndemo: interrupted; the lab was removed", file=sys.stderr)
        return 130
    print("done: the mesh formed" if ok else "demo: the mesh did not fully form (see above)")
    return 0 if ok else 1


def _cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "the demo builds network namespaces: run it as root"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} missing: run `bash tests/setup` first"
    return None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _demo(lab: Lab) -> bool:
    _section("The lab: one public host and three sites behind NATs, in network namespaces")
    public = lab.add_public_host("rendezvous")
    home = lab.add_nat("home", NatType.PORT_RESTRICTED)
    office = lab.add_nat("office", NatType.ADDRESS_RESTRICTED)
    carrier = lab.add_nat("carrier", NatType.PORT_RESTRICTED, lan="100.64.0.0/24")
    mobile = lab.add_nat("mobile", NatType.PORT_RESTRICTED, upstream=carrier)
    agents = [
        MeshAgent(home.add_host("homelab"), "homelab"),
        MeshAgent(office.add_host("officebox"), "officebox"),
        MeshAgent(mobile.add_host("laptop"), "laptop"),
    ]
    print(f"  {'rendezvous':<10}  {public.address}  public host")
    sites = [
        f"behind a port-restricted NAT ({home.address})",
        f"behind an address-restricted NAT ({office.address})",
        f"behind a port-restricted NAT behind a carrier-grade NAT ({carrier.address})",
    ]
    for agent, site in zip(agents, sites, strict=True):
        print(f"  {agent.name:<10}  {agent.host.address}  {site}")

    server = RendezvousServer(public)
    _section(f"On the public host: rendezvous serve --public-endpoint {public.address}:51820")
    server.start()
    print(f"  listening: WireGuard udp/51820, DNS udp+tcp/53, API tcp/51821 on {public.address}")
    _section("rendezvous token create --uses 3")
    token = server.token(3)
    print(f"  {token[:16]}... (a secret: it carries the API's TLS pin and a join secret)")

    _section("On each peer: MESHPEER_TOKEN=TOKEN meshpeer run --name NAME (userspace WireGuard)")
    started = time.monotonic()
    for agent in agents:
        agent.start(token)
    formed = wait_until(lambda: all_direct(agents), MESH_TIMEOUT_S, interval_s=0.1)
    elapsed = time.monotonic() - started
    if formed:
        print(f"  all three pairs direct {elapsed:.1f} s after the agents started")
    else:
        print(f"  not all pairs direct after {MESH_TIMEOUT_S} s")

    for agent in agents:
        _section(f"meshpeer status   (on {agent.name})")
        print(
            _indent(
                agent.host.run(
                    [MESHPEER, "status", "--state-dir", str(agent.state_dir)], check=False
                ).stdout
            )
        )

    _section("Ping matrix over the mesh addresses (round-trip time, one ping each)")
    pings_ok = _ping_matrix(agents)

    _section("rendezvous peers   (each peer's NAT mapping, learned from its handshakes)")
    print(_indent(server.cli("peers")))
    _dig(agents[0].host, public)
    return formed and pings_ok


def _ping_matrix(agents: list[MeshAgent]) -> bool:
    addresses = {agent.name: agent.address() for agent in agents}
    width = max(len(name) for name in addresses) + 2
    print("  " + "from \\ to".ljust(width + 2) + "".join(n.ljust(14) for n in addresses))
    all_ok = True
    for source in agents:
        cells = []
        for target, address in addresses.items():
            if target == source.name:
                cells.append("-".ljust(14))
                continue
            rtt = _ping(source.host, address)
            all_ok &= rtt is not None
            cells.append((f"{rtt} ms" if rtt else "FAILED").ljust(14))
        print("  " + source.name.ljust(width + 2) + "".join(cells))
    return all_ok


def _ping(host: Host, address: str) -> str | None:
    result = host.run(["ping", "-c1", "-W2", address], check=False)
    found = re.search(r"time=([\d.]+) ms", result.stdout)
    return found.group(1) if result.returncode == 0 and found else None


def _dig(host: Host, public: Host) -> None:
    server = f"@{public.address}"
    service = "_wireguard._udp.mesh.internal"
    _section(f"dig {server} {service} PTR +short   (from homelab: one instance per peer)")
    instances = host.run(["dig", server, service, "PTR", "+short"]).stdout.split()
    print(_indent("\n".join(instances)))
    if not instances:
        return
    _section(f"dig {server} <instance> SRV   (port and address = the NAT mapping)")
    answer = host.run(
        ["dig", server, instances[0], "SRV", "+noall", "+answer", "+additional"]
    ).stdout
    print(_indent(answer))
    _section(f"dig {server} laptop.mesh.internal A +short   (a peer's mesh address by name)")
    print(_indent(host.run(["dig", server, "laptop.mesh.internal", "A", "+short"]).stdout))


def _section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip().splitlines())


if __name__ == "__main__":
    sys.exit(main())
