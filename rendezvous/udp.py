"""The one UDP socket adapter of the rendezvous, for its sans-I/O cores: the WireGuard port
(wgport.py) and the DNS server (dnsserve.py).

`DatagramEndpoint` reads each datagram, hands it with its source and the loop's clock to a
handler, and sends what the handler returns. Answers leave from the very address the peer sent
to, even on a wildcard bind of a host with several addresses: a NAT that filters by address
(most do) drops an answer from any other. asyncio's datagram transport cannot set a source
address, so the endpoint reads and writes the socket itself with recvmsg/sendmsg and the
IP_PKTINFO / IPV6_PKTINFO control messages. A datagram longer than MAX_DATAGRAM arrives cut
short (MSG_TRUNC): it is counted and dropped, never handed on as if it were whole.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import struct
from collections.abc import Callable

from meshpeer.common.endpoints import Endpoint

from .wire import MAX_DATAGRAM

logger = logging.getLogger("meshpeer.rendezvous.udp")
logger.addHandler(logging.NullHandler())

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python 3.11 does not export it
BATCH = 64  # datagrams handled per wake-up before other tasks get a turn
_IN_PKTINFO = struct.Struct("=I4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex
_ANCILLARY_SPACE = socket.CMSG_SPACE(max(_IN_PKTINFO.size, _IN6_PKTINFO.size))

ControlMessage = tuple[int, int, bytes]
# Given a datagram, its source and the time, the datagrams to send back (to any address).
DatagramHandler = Callable[[bytes, Endpoint, float], list[tuple[bytes, Endpoint]]]


class DatagramEndpoint:
    """A UDP socket on the event loop whose answers leave from the address each datagram hit."""

    def __init__(
        self,
        sock: socket.socket,
        handler: DatagramHandler,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._sock = sock
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._clock = clock or self._loop.time
        self.send_failures = 0
        self.drops: collections.Counter[str] = collections.Counter()  # never reached a core
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
                data, ancillary, flags, source = self._sock.recvmsg(MAX_DATAGRAM, _ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                # An ICMP error for an earlier send (a peer's NAT closed): nothing to do.
                logger.debug("udp error: %s", error)
                continue
            if flags & socket.MSG_TRUNC:
                # Longer than any message we answer: its first MAX_DATAGRAM bytes would parse
                # as a message it is not.
                self.drops["oversized"] += 1
                continue
            self._handle(data, (source[0], source[1]), _reply_control(ancillary))

    def _handle(self, data: bytes, source: Endpoint, control: list[ControlMessage]) -> None:
        try:
            answers = self._handler(data, source, self._clock())
        except Exception:
            # The cores promise not to raise; if one does, that is a bug to log, and the
            # next datagram is still served.
            logger.exception("handling a datagram from %s failed", source)
            return
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
