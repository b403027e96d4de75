"""Declare a network of hosts, NAT routers and an internet in network namespaces.

    with Lab() as lab:
        server = lab.add_public_host("server")
        home = lab.add_nat("home", NatType.PORT_RESTRICTED)
        laptop = home.add_host("laptop")
        laptop.run(["ping", "-c1", str(server.address)])

Each segment (the internet, each NAT's LAN) is a bridge in a switch namespace of its own; hosts
and routers plug into it with veth pairs made directly inside their namespaces, so the lab never
puts an interface in the root namespace. Every node gets a private /run (wireguard-go puts its
UAPI socket in /run/wireguard, so two hosts with a wg0 would otherwise collide).
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .leaks import leaks
from .nat import TABLE, NatSpec, NatType, ruleset
from .netns import LAB_ROOT, PREFIX, delete_namespace, run, sweep_stale
from .process import LabProcess, LineAgent
from .udp import Reflector, UdpSocket

INTERNET = ipaddress.IPv4Network("203.0.113.0/24")  # TEST-NET-3 (RFC 5737): the lab's public space
_UDP_AGENT = Path(__file__).with_name("udp_agent.py")
# Runs a command with the node's own folder mounted over /run, in a mount namespace that
# `ip netns exec` has already made private to this one command.
_WITH_PRIVATE_RUN = 'mount --bind "$0" /run && exec "$@"'


class Lab:
    """One topology; everything it made is removed by close(), also after failures."""

    def __init__(self, internet: ipaddress.IPv4Network = INTERNET) -> None:
        sweep_stale()
        self.run_id = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.dir = LAB_ROOT / self.run_id
        self.dir.mkdir(parents=True)
        self.namespaces: list[str] = []
        self.join_tokens: list[str] = []  # for the check that no log holds a secret
        self.leaked_secrets: list[str] = []
        self.processes: list[LabProcess | LineAgent] = []
        self._lan_numbers = itertools.count(1)
        self.internet = Segment(self, "internet", internet)

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def namespace(self, role: str) -> str:
        name = f"{PREFIX}-{self.run_id}-{role}"
        self.namespaces.append(name)  # before creating, so a half-made one is still removed
        run(["ip", "netns", "add", name])
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def add_public_host(self, name: str) -> Host:
        host = Host(self, name)
        self.internet.attach(host, "eth0")
        return host

    def add_nat(
        self,
        name: str,
        nat_type: NatType,
        *,
        hairpin: bool = False,
        upstream: Router | None = None,
        lan: str | None = None,
    ) -> Router:
        """A NAT router on the internet, or behind `upstream` (a NAT behind a NAT: CGNAT)."""
        number = next(self._lan_numbers)
        lan_network = ipaddress.IPv4Network(lan or f"192.168.{number}.0/24")
        uplink = upstream.lan if upstream else self.internet
        return Router(self, name, nat_type, uplink, lan_network, hairpin=hairpin)

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        # Read once every process has stopped and written its last line, before the logs go.
        self.leaked_secrets = leaks(self.dir, self.join_tokens)
        for name in reversed(self.namespaces):
            delete_namespace(name)
        shutil.rmtree(self.dir, ignore_errors=True)


class Segment:
    """A layer-2 segment: a bridge in a switch namespace, addresses handed out in order."""

    def __init__(
        self,
        lab: Lab,
        role: str,
        network: ipaddress.IPv4Network,
        gateway: ipaddress.IPv4Address | None = None,
    ) -> None:
        self.network = network
        self.gateway = gateway
        self.ns = lab.namespace(f"sw-{role}")
        run(["ip", "-n", self.ns, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.ns, "link", "set", "br0", "up"])
        # .1 is the gateway's on every segment (a router's LAN) or stays unused (the internet)
        self._free = itertools.islice(network.hosts(), 1, None)
        self._ports = itertools.count()

    def attach(self, node: Node, ifname: str, address: ipaddress.IPv4Address | None = None) -> None:
        """Plug `node` in as `ifname`; its uplink (any interface but a router's lan) routes via
        the segment's gateway, if the segment has one."""
        address = address or next(self._free)
        port = f"p{next(self._ports)}"
        run(
            [
                "ip",
                "-n",
                node.ns,
                "link",
                "add",
                ifname,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                self.ns,
            ]
        )
        run(["ip", "-n", self.ns, "link", "set", port, "master", "br0", "up"])
        interface = f"{address}/{self.network.prefixlen}"
        run(["ip", "-n", node.ns, "addr", "add", interface, "dev", ifname])
        run(["ip", "-n", node.ns, "link", "set", ifname, "up"])
        node.addresses[ifname] = address
        if self.gateway is not None and address != self.gateway:
            run(["ip", "-n", node.ns, "route", "add", "default", "via", str(self.gateway)])


class Node:
    """Anything with a namespace: runs commands and processes with its own /run."""

    def __init__(self, lab: Lab, name: str, role: str) -> None:
        self.lab = lab
        self.name = name
        self.ns = lab.namespace(f"{role}-{name}")
        self.dir = lab.dir / name
        self.rundir = self.dir / "run"
        self.rundir.mkdir(parents=True)
        self.addresses: dict[str, ipaddress.IPv4Address] = {}

    def argv(self, command: Sequence[str]) -> list[str]:
        return [
            "ip",
            "netns",
            "exec",
            self.ns,
            "sh",
            "-c",
            _WITH_PRIVATE_RUN,
            str(self.rundir),
            *command,
        ]

    def run(
        self, command: Sequence[str], *, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        return run(self.argv(command), check=check, timeout=timeout)

    def spawn(
        self, name: str, command: Sequence[str], env: dict[str, str] | None = None
    ) -> LabProcess:
        process = LabProcess(name, self.argv(command), self.dir / f"{name}.log", env)
        self.lab.processes.append(process)
        return process

    def udp_socket(self, port: int) -> UdpSocket:
        agent = LineAgent(
            f"udp:{self.name}:{port}", self.argv([sys.executable, str(_UDP_AGENT), str(port)])
        )
        self.lab.processes.append(agent)
        return UdpSocket(agent)

    def start_reflector(self, port: int = 3478) -> Reflector:
        command = [sys.executable, str(_UDP_AGENT), str(port), "reflect"]
        agent = LineAgent(f"reflector:{self.name}:{port}", self.argv(command))
        self.lab.processes.append(agent)
        return Reflector(agent, (str(self.address), port))

    def ping(self, address: ipaddress.IPv4Address | str, timeout_s: int = 1) -> bool:
        result = self.run(["ping", "-c1", "-W", str(timeout_s), str(address)], check=False)
        return result.returncode == 0

    @property
    def address(self) -> ipaddress.IPv4Address:
        """The address on the node's uplink (eth0 for hosts, wan for routers)."""
        return self.addresses.get("eth0") or self.addresses["wan"]


class Host(Node):
    def __init__(self, lab: Lab, name: str) -> None:
        super().__init__(lab, name, "h")

    def move_to(self, router: Router) -> None:
        """Unplug eth0 and plug it into `router`'s LAN, as a laptop carried to another
        network: the old link, address and default route go, new ones come (netlink sees
        all of it), and whatever runs on the host keeps running."""
        run(["ip", "-n", self.ns, "link", "del", "eth0"])
        del self.addresses["eth0"]
        router.lan.attach(self, "eth0")


class Router(Node):
    """A NAT router: `wan` on its uplink segment, `lan` as the gateway of its own LAN segment."""

    def __init__(
        self,
        lab: Lab,
        name: str,
        nat_type: NatType,
        uplink: Segment,
        lan_network: ipaddress.IPv4Network,
        *,
        hairpin: bool,
    ) -> None:
        super().__init__(lab, name, "r")
        self.nat_type = nat_type
        gateway = next(lan_network.hosts())
        self.lan = Segment(lab, name, lan_network, gateway)
        uplink.attach(self, "wan")
        self.lan.attach(self, "lan", gateway)
        run(["ip", "netns", "exec", self.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.spec = NatSpec(nat_type, self.public_address, lan_network, hairpin=hairpin)
        run(["ip", "netns", "exec", self.ns, "nft", "-f", "-"], stdin=ruleset(self.spec))

    @property
    def public_address(self) -> ipaddress.IPv4Address:
        return self.addresses["wan"]

    def add_host(self, name: str) -> Host:
        host = Host(self.lab, name)
        self.lan.attach(host, "eth0")
        return host

    def reset_mappings(self) -> None:
        """Forget every mapping, as a NAT does when it reboots: the next packet gets a new port."""
        flush = "".join(f"flush {kind} ip {TABLE} {name}\n" for kind, name in _NAT_STATE)
        # Flushed on both sides of the conntrack flush: a packet in between would re-add them.
        run(["ip", "netns", "exec", self.ns, "nft", "-f", "-"], stdin=flush)
        run(["ip", "netns", "exec", self.ns, "conntrack", "-F"], check=False)
        run(["ip", "netns", "exec", self.ns, "nft", "-f", "-"], stdin=flush)

    def nat_state(self) -> str:
        """The NAT's mapping table and contacts, as nft prints them (for failure messages)."""
        return "\n".join(
            run(["ip", "netns", "exec", self.ns, "nft", "list", kind, "ip", TABLE, name]).stdout
            for kind, name in _NAT_STATE
        )


_NAT_STATE = (("map", "eim"), ("map", "inbound"), ("set", "contacts"))
