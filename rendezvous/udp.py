"""The asyncio adapter around the handshake core: one UDP socket, nothing else.

It feeds every datagram to the `Responder`, sends what the core produced, and hands each event
to `on_event`. Answers leave from the very address the peer sent to, even on a wildcard bind of
a host with several addresses: a NAT that filters by address (most do) drops an answer from any
other. asyncio's datagram transport cannot set a source address, so this reads and writes the
socket itself with recvmsg/sendmsg and the IP_PKTINFO / IPV6_PKTINFO control messages.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable

from .handshake import Event, Responder

logger = logging.getLogger("meshpeer.rendezvous.udp")
logger.addHandler(logging.NullHandler())

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python 3.11 does not export it
MAX_DATAGRAM = 2048  # every WireGuard message we accept is far smaller; more is garbage anyway
BATCH = 64  # datagrams handled per wake-up before other tasks get a turn
_IN_PKTINFO = struct.Struct("=I4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex
_ANCILLARY_SPACE = socket.CMSG_SPACE(max(_IN_PKTINFO.size, _IN6_PKTINFO.size))

ControlMessage = tuple[int, int, bytes]


class HandshakeSocket:
    def __init__(
        self, responder: Responder, sock: socket.socket, on_event: Callable[[Event], None]
    ) -> None:
        self.responder = responder
        self._sock = sock
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self.send_failures = 0
        self._loop.add_reader(sock.fileno(), self._readable)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def _readable(self) -> None:
        for _ in range(BATCH):
            try:
                data, ancillary, _flags, source = self._sock.recvmsg(MAX_DATAGRAM, _ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                # An ICMP error for an earlier send (a peer's NAT closed): nothing to do.
                logger.debug("udp error: %s", error)
                continue
            self._handle(data, (source[0], source[1]), _reply_control(ancillary))

    def _handle(self, data: bytes, source: tuple[str, int], control: list[ControlMessage]) -> None:
        self.responder.receive_datagram(data, source, self._loop.time())
        for datagram, destination in self.responder.datagrams_to_send():
            try:
                self._sock.sendmsg([datagram], control, 0, destination)
            except OSError as error:
                # UDP gives no delivery promise; a full buffer is a lost packet, as on the wire.
                self.send_failures += 1
                logger.debug("udp send to %s failed: %s", destination, error)
        while (event := self.responder.next_event()) is not None:
            self._on_event(event)


def _reply_control(ancillary: list[ControlMessage]) -> list[ControlMessage]:
    """The control message that makes the answer leave from the address the datagram came to."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            _ifindex, _spec_dst, destination = _IN_PKTINFO.unpack_from(data)
            return [(level, kind, _IN_PKTINFO.pack(0, destination, bytes(4)))]
        if (
            level == socket.IPPROTO_IPV6
            and kind == socket.IPV6_PKTINFO
            and len(data) >= _IN6_PKTINFO.size
        ):
            destination, ifindex = _IN6_PKTINFO.unpack_from(data)
            return [(level, kind, _IN6_PKTINFO.pack(destination, ifindex))]
    return []


def open_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.setblocking(False)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def serve_handshakes(
    responder: Responder, host: str, port: int, on_event: Callable[[Event], None]
) -> HandshakeSocket:
    return HandshakeSocket(responder, open_socket(host, port), on_event)
