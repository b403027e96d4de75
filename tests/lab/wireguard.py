"""wireguard-go on lab hosts, configured with wg(8) through its UAPI socket."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from .netns import LabError, run
from .process import LabProcess
from .topology import Node
from .udp import Address, Reflector

SOCKET_WAIT_S = 5.0
# wireguard-go refuses to start where the kernel has WireGuard unless told this.
USERSPACE_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}


@dataclass(frozen=True, slots=True)
class KeyPair:
    private_key: str
    public_key: str

    @classmethod
    def generate(cls) -> KeyPair:
        private_key = run(["wg", "genkey"]).stdout.strip()
        public_key = run(["wg", "pubkey"], stdin=private_key + "\n").stdout.strip()
        return cls(private_key, public_key)


class WireGuardGo:
    """One userspace WireGuard interface on a host, with its address and listen port."""

    def __init__(
        self, node: Node, address: str, *, ifname: str = "wg0", listen_port: int = 51820
    ) -> None:
        self.node = node
        self.ifname = ifname
        self.listen_port = listen_port
        self.interface = ipaddress.IPv4Interface(address)
        self.keys = KeyPair.generate()
        self.process: LabProcess | None = None

    @property
    def public_key(self) -> str:
        return self.keys.public_key

    @property
    def socket_path(self) -> str:
        return str(self.node.rundir / "wireguard" / f"{self.ifname}.sock")

    def start(self) -> WireGuardGo:
        command = ["wireguard-go", "--foreground", self.ifname]
        self.process = self.node.spawn(f"wireguard-go-{self.ifname}", command, USERSPACE_ENV)
        self._wait_for_socket()
        key_file = self.node.dir / f"{self.ifname}.key"
        key_file.write_text(self.keys.private_key + "\n")
        key_file.chmod(0o600)
        self.node.run(
            [
                "wg",
                "set",
                self.ifname,
                "private-key",
                str(key_file),
                "listen-port",
                str(self.listen_port),
            ]
        )
        self.node.run(["ip", "addr", "add", str(self.interface), "dev", self.ifname])
        self.node.run(["ip", "link", "set", self.ifname, "up"])
        return self

    def _wait_for_socket(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + SOCKET_WAIT_S
        while time.monotonic() < deadline:
            if (self.node.rundir / "wireguard" / f"{self.ifname}.sock").exists():
                return
            if not self.process.running():
                raise LabError(f"wireguard-go exited: {self.process.output()}")
            time.sleep(0.02)
        raise LabError(f"wireguard-go made no UAPI socket in {SOCKET_WAIT_S} s")

    def add_peer(
        self,
        public_key: str,
        allowed_ips: str,
        endpoint: Address | None = None,
        keepalive_s: int | None = None,
    ) -> None:
        command = ["wg", "set", self.ifname, "peer", public_key, "allowed-ips", allowed_ips]
        if endpoint is not None:
            command += ["endpoint", f"{endpoint[0]}:{endpoint[1]}"]
        if keepalive_s is not None:
            command += ["persistent-keepalive", str(keepalive_s)]
        self.node.run(command)

    def latest_handshakes(self) -> dict[str, int]:
        """Unix time of each peer's latest handshake (0: never)."""
        dump = self.node.run(["wg", "show", self.ifname, "latest-handshakes"]).stdout
        return {key: int(when) for key, when in (line.split() for line in dump.splitlines())}

    def endpoints(self) -> dict[str, str]:
        dump = self.node.run(["wg", "show", self.ifname, "endpoints"]).stdout
        return {key: where for key, where in (line.split() for line in dump.splitlines())}

    def show(self) -> str:
        return self.node.run(["wg", "show", self.ifname]).stdout


def learn_mapping(node: Node, port: int, reflector: Reflector) -> Address:
    """What the outside sees of `port` on `node`: asked from the reflector, as STUN does.

    The socket is closed again so that WireGuard can bind the port; an endpoint-independent NAT
    keeps the mapping for the same internal port, a symmetric one makes a new one per destination.
    """
    socket = node.udp_socket(port)
    try:
        mapped = socket.ask(reflector.address)
    finally:
        socket.agent.stop()
    if mapped is None:
        raise LabError(f"{node.name}: reflector {reflector.address} did not answer")
    return mapped
