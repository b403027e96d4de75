"""What the benchmarks share: the machine description, a private network namespace, processes
pinned to a core, and a closed-loop generator of valid WireGuard initiations.

The generator speaks to any responder (ours or wireguard-go) over UDP on loopback. Each simulated
peer has its own key and its own source address (127.1.x.y, chosen per datagram with IP_PKTINFO),
so per-address rate limits and cookies work as they would for real peers. A peer reuses one
ephemeral key for all its initiations: that makes an initiation cost the generator one small
AEAD and two MACs instead of two X25519 operations, while the responder still does all of its
work (WireGuard responders do not remember ephemerals). Cookie replies are honoured: the next
initiation from that address carries mac2.
"""

from __future__ import annotations

import contextlib
import os
import platform
import select
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshpeer.rendezvous import noise, wire

IP_PKTINFO = 8
SERVER_CORE, LOAD_CORE = 0, 1  # the responder under test gets core 0, the generator core 1


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0]
    return (
        f"machine: {model}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average {load:.2f} at start"
    )


def pin(core: int) -> None:
    os.sched_setaffinity(0, {core})


def pinned(core: int, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv]


@contextlib.contextmanager
def private_namespace(prefix: str = "mpbench") -> Iterator[str]:
    """A network namespace of our own with loopback up; this process moves into it."""
    from pyroute2 import netns

    name = f"{prefix}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        netns.setns(name)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def uapi_exchange(control: Path, request: bytes) -> bytes:
    """One request on a wireguard-go UAPI socket, answered up to its blank line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect(str(control))
        sock.sendall(request)
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its threads) so far."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def process_tree(root: int) -> list[int]:
    """`root` and every live descendant of it (a server's workers, a database's backends)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # gone since the listing
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
    tree = [root]
    for pid in tree:  # grows as it goes: breadth first
        tree.extend(child for child, parent in parents.items() if parent == pid)
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU time of `root` and its descendants so far, with that of the children they already
    reaped (cutime, cstime): a database's short-lived backends count after they exit too."""
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            fields = _stat_fields(pid)
            total += sum(int(fields[index]) for index in (11, 12, 13, 14))
    return total / os.sysconf("SC_CLK_TCK")


def tree_pss_bytes(root: int) -> tuple[int, int]:
    """(proportional set size summed over the tree, its process count). PSS, not RSS: memory
    shared between processes (PostgreSQL's shared buffers) is counted once in all, not in each."""
    total = count = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as rollup:
            total += sum(int(line.split()[1]) * 1024 for line in rollup if line.startswith("Pss:"))
            count += 1
    return total, count


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces): state is [0], ppid [1]."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


# -- simulated peers -----------------------------------------------------------------------------


@dataclass(slots=True)
class SimulatedPeer:
    """One initiator key, with everything of its initiation that does not change precomputed."""

    address: str
    prefix: bytes  # ephemeral public + encrypted static: the same in every initiation
    timestamp_aead: ChaCha20Poly1305
    hash_before_timestamp: bytes
    cookie: bytes | None = None
    cookie_at: float = 0.0
    last_sent: float = 0.0


class InitiationFactory:
    def __init__(self, responder_public_key: bytes, keys: list[X25519PrivateKey]) -> None:
        self.responder = responder_public_key
        self.mac1_key = noise.blake2s(noise.LABEL_MAC1, responder_public_key)
        self.cookie_key = noise.blake2s(noise.LABEL_COOKIE, responder_public_key)
        self.peers = [self._peer(key, number) for number, key in enumerate(keys)]

    def _peer(self, key: X25519PrivateKey, number: int) -> SimulatedPeer:
        ephemeral = X25519PrivateKey.generate()
        ephemeral_public = noise.public_bytes(ephemeral)
        hash_ = noise.blake2s(noise.blake2s(noise.HASH_INIT, self.responder), ephemeral_public)
        chaining_key = noise.kdf(noise.CHAINING_KEY_INIT, ephemeral_public, 1)[0]
        chaining_key, aead_key = noise.kdf(chaining_key, noise.dh(ephemeral, self.responder), 2)
        static = noise.aead_encrypt(aead_key, 0, noise.public_bytes(key), hash_)
        hash_ = noise.blake2s(hash_, static)
        _, timestamp_key = noise.kdf(chaining_key, noise.dh(key, self.responder), 2)
        address = f"127.1.{number // 250}.{number % 250 + 1}"
        return SimulatedPeer(
            address, ephemeral_public + static, ChaCha20Poly1305(timestamp_key), hash_
        )

    def initiation(self, peer: SimulatedPeer, sender: int, now: float) -> tuple[bytes, bytes]:
        """The datagram and its mac1 (a cookie reply is sealed to it)."""
        stamp = noise.tai64n(time.time())
        encrypted = peer.timestamp_aead.encrypt(bytes(12), stamp, peer.hash_before_timestamp)
        body = struct.pack("<II", wire.MessageType.INITIATION, sender) + peer.prefix + encrypted
        mac1 = noise.mac(self.mac1_key, body)
        if peer.cookie is not None and now - peer.cookie_at < 110:
            mac2 = noise.mac(peer.cookie, body + mac1)
        else:
            mac2 = bytes(16)
        return body + mac1 + mac2, mac1

    def take_cookie(self, peer: SimulatedPeer, reply: bytes, mac1: bytes, now: float) -> None:
        message = wire.parse(reply)
        if not isinstance(message, wire.CookieReply):
            return
        peer.cookie = noise.xaead_decrypt(
            self.cookie_key, message.nonce, message.encrypted_cookie, mac1
        )
        peer.cookie_at = now


@dataclass(slots=True)
class LoadResult:
    seconds: float
    handshakes: int
    cookie_replies: int
    lost: int

    @property
    def rate(self) -> float:
        return self.handshakes / self.seconds


def blast(
    factory: InitiationFactory,
    target: tuple[str, int],
    seconds: float,
    window: int = 48,
    port: int = 40000,
) -> LoadResult:
    """Keep `window` initiations outstanding for `seconds`; count completed handshakes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", port))  # noqa: S104  (inside the benchmark's own namespace)
    sock.setblocking(False)
    outstanding: dict[int, tuple[SimulatedPeer, bytes, float]] = {}
    peers = factory.peers
    turn = 0
    sender = 1
    handshakes = cookies = lost = 0
    started = time.monotonic()
    end = started + seconds
    try:
        while (now := time.monotonic()) < end:
            while len(outstanding) < window:
                peer = peers[turn % len(peers)]
                turn += 1
                if now - peer.last_sent < 0.025:  # responders take 50 initiations/s per peer
                    break
                datagram, mac1 = factory.initiation(peer, sender, now)
                control = [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo(peer.address))]
                sock.sendmsg([datagram], control, 0, target)
                outstanding[sender] = (peer, mac1, now)
                peer.last_sent = now
                sender = sender % 0xFFFFFFFF + 1
            select.select([sock], [], [], 0.002)
            while True:
                try:
                    reply = sock.recv(256)
                except BlockingIOError:
                    break
                if len(reply) < 8:
                    continue
                entry = outstanding.pop(receiver_of(reply), None)
                kind = reply[0]
                if entry is None:
                    continue
                if kind == wire.MessageType.RESPONSE:
                    handshakes += 1
                elif kind == wire.MessageType.COOKIE_REPLY:
                    cookies += 1
                    factory.take_cookie(entry[0], reply, entry[1], now)
            for number, (_, _, sent_at) in list(outstanding.items()):
                if now - sent_at > 0.5:
                    del outstanding[number]
                    lost += 1
    finally:
        sock.close()
    return LoadResult(time.monotonic() - started, handshakes, cookies, lost)


def receiver_of(reply: bytes) -> int:
    """Our sender index, as a response (after its own sender) or a cookie reply carries it."""
    offset = 8 if reply[0] == wire.MessageType.RESPONSE else 4
    return int(struct.unpack_from("<I", reply, offset)[0])


def pktinfo(source: str) -> bytes:
    """IP_PKTINFO that makes a datagram leave from `source` (any address of ours)."""
    return struct.pack("=I4s4s", 0, socket.inet_aton(source), bytes(4))
