"""The simulated peers of bench/scale.py: each its own key and source address (127.x.y.z) and our
own initiator core, first handshaking once, then keepalive-ing every 25 s and rekeying every
120 s, spread evenly over time, as WireGuard peers with a persistent keepalive of 25 s do."""

from __future__ import annotations

import random
import select
import socket
import struct
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.rendezvous import wire
from meshpeer.rendezvous.initiator import HandshakeFailed, Initiator

import loadgen

WG_PORT = 51820
# WireGuard's persistent keepalive as agents set it, and its REKEY_AFTER_TIME.
KEEPALIVE_S, REKEY_S = 25.0, 120.0


class Simulation:
    def __init__(self, keys: list[X25519PrivateKey], rendezvous_key: bytes) -> None:
        self.peers = [Initiator(key, rendezvous_key) for key in keys]
        self.sources = [_source(number) for number in range(len(keys))]
        self.pending: dict[int, int] = {}  # sender index -> peer number
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.sock.bind(("0.0.0.0", 40000))  # noqa: S104  (inside the benchmark's own namespace)
        self.sock.setblocking(False)
        self.target = ("127.0.0.1", WG_PORT)
        self.completed = self.cookies = self.keepalives = 0
        self.order = random.sample(range(len(keys)), len(keys))  # whose turn it is, steadily
        self.turns = (0, 0)  # keepalives and rekeys sent so far in that order

    def close(self) -> None:
        self.sock.close()

    def send(self, number: int, datagram: bytes) -> None:
        control = [(socket.IPPROTO_IP, loadgen.IP_PKTINFO, self.sources[number])]
        try:
            self.sock.sendmsg([datagram], control, 0, self.target)
        except BlockingIOError:
            pass  # a full buffer is a lost packet; the peer retries as WireGuard would

    def initiate(self, number: int) -> None:
        datagram = self.peers[number].initiation(time.time())
        self.pending[struct.unpack_from("<I", datagram, 4)[0]] = number
        self.send(number, datagram)

    def keepalive(self, number: int) -> None:
        if self.peers[number].keys is not None:
            self.send(number, self.peers[number].keepalive())
            self.keepalives += 1

    def receive(self, wait_s: float) -> None:
        select.select([self.sock], [], [], wait_s)
        while True:
            try:
                reply = self.sock.recv(256)
            except BlockingIOError:
                return
            if len(reply) < 12:
                continue
            kind = reply[0]
            number = self.pending.pop(loadgen.receiver_of(reply), None)
            if number is None:
                continue
            try:
                self.peers[number].receive(reply)
            except HandshakeFailed:
                continue
            if kind == wire.MessageType.COOKIE_REPLY:
                self.cookies += 1
                self.initiate(number)  # again at once, now with mac2
            else:
                self.completed += 1
                self.keepalive(number)  # confirms the endpoint, as WireGuard's first data does

    def bootstrap(self, window: int = 64) -> float:
        """Every peer completes one handshake; returns the seconds it took."""
        started = time.monotonic()
        waiting = list(range(len(self.peers)))
        sent_at: dict[int, float] = {}
        while self.completed < len(self.peers):
            now = time.monotonic()
            while waiting and len(self.pending) < window:
                number = waiting.pop()
                sent_at[number] = now
                self.initiate(number)
            self.receive(0.005)
            for sender, number in list(self.pending.items()):
                if now - sent_at[number] > 2.0:  # lost: try again
                    del self.pending[sender]
                    waiting.append(number)
            if time.monotonic() - started > 600:
                raise SystemExit(f"only {self.completed} handshakes in 600 s")
        return time.monotonic() - started

    def steady(self, seconds: float, slice_s: float, on_slice: Callable[[], None]) -> None:
        """Keepalives every 25 s and rekeys every 120 s per peer, spread evenly; `on_slice`
        runs every `slice_s` (the benchmark reads the servers' CPU there)."""
        count, order = len(self.peers), self.order
        keepalive_due = rekey_due = 0.0
        keepalive_turn, rekey_turn = self.turns
        started = last = time.monotonic()
        sliced = started
        while (now := time.monotonic()) - started < seconds:
            keepalive_due += (now - last) * count / KEEPALIVE_S
            rekey_due += (now - last) * count / REKEY_S
            last = now
            while keepalive_due >= 1:
                self.keepalive(order[keepalive_turn % count])
                keepalive_turn += 1
                keepalive_due -= 1
            while rekey_due >= 1:
                self.initiate(order[(rekey_turn + count // 2) % count])
                rekey_turn += 1
                rekey_due -= 1
            if now - sliced >= slice_s:
                on_slice()
                sliced = now
            self.receive(0.005)
        if time.monotonic() - sliced > slice_s / 2:  # a last sliver would be all noise
            on_slice()
        self.turns = (keepalive_turn, rekey_turn)  # the next call goes on where this one ends


def _source(number: int) -> bytes:
    return loadgen.pktinfo(f"127.{1 + number // 65536}.{number // 256 % 256}.{number % 256}")
