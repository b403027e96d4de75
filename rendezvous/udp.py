"""UDP on asyncio for the sans-I/O cores: the handshake responder, and the DNS server.

`serve_handshakes` feeds every datagram to the `Responder`, hands each event to `on_event` and
sends what the core produced. Answers leave from the very address the peer sent to, even on a
wildcard bind of a host with several addresses: a NAT that filters by address (most do) drops
an answer from any other. asyncio's datagram transport cannot set a source address, so
`DatagramEndpoint` reads and writes the socket itself with recvmsg/sendmsg and the IP_PKTINFO /
IPV6_PKTINFO control messages.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable

from meshpeer.common.endpoints import Endpoint

from .handshake import Event, Responder
from .wire import MAX_DATAGRAM

logger = logging.getLogger("meshpeer.rendezvous.udp")
logger.addHandler(logging.NullHandler())

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python 3.11 does not export it
BATCH = 64  # datagrams handled per wake-up before other tasks get a turn
_IN_PKTINFO = struct.Struct("=I4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex
_ANCILLARY_SPACE = socket.CMSG_SPACE(max(_IN_PKTINFO.size, _IN6_PKTINFO.size))

ControlMessage = tuple[int, int, bytes]
# Given a datagram and its source, the datagrams to send back (to any address).
DatagramHandler = Callable[[bytes, Endpoint], list[tuple[bytes, Endpoint]]]


class DatagramEndpoint:
    """A UDP socket on the event loop whose answers leave from the address each datagram hit."""

    def __init__(self, sock: socket.socket, handler: DatagramHandler) -> None:
        self._sock = sock
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self.send_failures = 0
        self._loop.add_reader(sock.fileno(), self._readable)

    @property
    def address(self) -> Endpoint:
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
            control = _reply_control(ancillary)
            try:
                answers = self._handler(data, (source[0], source[1]))
            except Exception:
                # The cores promise not to raise; if one does, that is a bug to log, and the
                # next datagram is still served.
                logger.exception("handling a datagram from %s failed", source)
                continue
            for datagram, destination in answers:
                self._send(datagram, destination, control)

    def _send(self, datagram: bytes, destination: Endpoint, control: list[ControlMessage]) -> None:
        try:
            self._sock.sendmsg([datagram], control, 0, destination)
        except OSError as error:
            # UDP gives no delivery promise; a full buffer is a lost packet, as on the wire.
            self.send_failures += 1
            logger.debug("udp send to %s failed: %s", destination, error)


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


def handshake_handler(
    responder: Responder, on_event: Callable[[Event], None], clock: Callable[[], float]
) -> DatagramHandler:
    """Feeds the responder; hands its events on; returns what it wants sent."""

    def handle(data: bytes, source: Endpoint) -> list[tuple[bytes, Endpoint]]:
        responder.receive_datagram(data, source, clock())
        while (event := responder.next_event()) is not None:
            on_event(event)
        return responder.datagrams_to_send()

    return handle


async def serve_handshakes(
    responder: Responder, host: str, port: int, on_event: Callable[[Event], None]
) -> DatagramEndpoint:
    handler = handshake_handler(responder, on_event, asyncio.get_running_loop().time)
    return DatagramEndpoint(open_socket(host, port), handler)
