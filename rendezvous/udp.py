"""The one UDP socket adapter of the rendezvous, for its sans-I/O cores: the WireGuard port
(wgport.py) and the DNS server (dnsserve.py).

`DatagramEndpoint` reads each datagram, hands it with its source and the loop's clock to a
handler, and sends what the handler returns. Answers leave from the very address the peer sent
to, even on a wildcard bind of a host with several addresses: a NAT that filters by address
(most do) drops an answer from any other. asyncio's datagram transport cannot set a source
address, so the endpoint reads and writes the socket itself with recvmsg/sendmsg and the
IP_PKTINFO / IPV6_PKTINFO control messages (only on a wildcard bind: a socket bound to one
address answers from it anyway). A datagram longer than MAX_DATAGRAM is counted and dropped,
never handed on cut short as if it were whole.

Given a `FastLane` (the WireGuard port's relay), the socket is read by a thread of its own that
forwards the lane's datagrams itself and queues the rest for the loop, never more than the loop
can take: while its inbox is full the thread reads nothing (what arrives waits in the socket
buffer, and past it the kernel drops it, as when the loop read the socket), because a datagram
read only to be dropped costs the GIL the loop needs to catch up. Relayed transport data is
nearly every datagram the port sees under load, and on the loop each one paid for an epoll
wake-up and its share of a busy loop: the thread forwards a datagram in about half the CPU
(15 against 26 us in `bench/relay.py`), and sooner, which is what TCP across a relayed
tunnel feels (0.44 of direct became 0.64, against 0.69 for a bare forwarder).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import socket
import struct
import threading
from collections.abc import Callable
from typing import Protocol

from meshpeer.common.endpoints import Endpoint

from .timers import READER_WAKE_S
from .wire import MAX_DATAGRAM

logger = logging.getLogger("meshpeer.rendezvous.udp")
logger.addHandler(logging.NullHandler())

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python 3.11 does not export it
BATCH = 64  # datagrams handled per wake-up before other tasks get a turn
# Datagrams the reader thread may queue for a loop that has fallen behind; while that many
# wait, the thread reads no more (a flood must grow neither memory nor the thread's share of
# the GIL while the loop is busy).
INBOX_LIMIT = 4096
# Socket buffers asked for: a relay is descheduled now and then on a busy host, and a burst
# that arrives meanwhile must wait, not be dropped (the kernel caps them at net.core.rmem_max
# and wmem_max unless we may force them).
BUFFER_BYTES = 4 << 20
_IN_PKTINFO = struct.Struct("=I4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex
_ANCILLARY_SPACE = socket.CMSG_SPACE(max(_IN_PKTINFO.size, _IN6_PKTINFO.size))

ControlMessage = tuple[int, int, bytes]
_NO_CONTROL: list[ControlMessage] = []  # never changed: shared by every datagram without one
# Given a datagram, its source and the time, the datagrams to send back (to any address).
DatagramHandler = Callable[[bytes, Endpoint, float], list[tuple[bytes, Endpoint]]]


class FastLane(Protocol):
    """The datagrams the reader thread forwards itself, never waiting for the loop. Both are
    called from that thread, so whatever they read the loop may change must be safe to share."""

    def takes(self, data: bytes) -> bool: ...

    def destination(self, data: bytes, source: Endpoint, now: float) -> Endpoint | None: ...


class DatagramEndpoint:
    """A UDP socket on the event loop whose answers leave from the address each datagram hit."""

    def __init__(
        self,
        sock: socket.socket,
        handler: DatagramHandler,
        clock: Callable[[], float] | None = None,
        lane: FastLane | None = None,
    ) -> None:
        self._sock = sock
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._clock = clock or self._loop.time
        self._ancillary_space = _ANCILLARY_SPACE if _is_wildcard(sock) else 0
        self.send_failures = 0
        self.drops: collections.Counter[str] = collections.Counter()  # never reached a core
        self._reader: _ReaderThread | None = None
        if lane is None:
            self._loop.add_reader(sock.fileno(), self._readable)
        else:
            self._reader = _ReaderThread(self, lane)

    @property
    def address(self) -> Endpoint:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        if self._reader is not None:
            self._reader.stop()  # before the socket goes: its number may be reused at once
        else:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    def _readable(self) -> None:
        for _ in range(BATCH):
            try:
                received = self._receive()
            except (BlockingIOError, InterruptedError):
                return
            if received is not None:
                self._handle(*received)

    def _receive(self) -> tuple[bytes, Endpoint, list[ControlMessage]] | None:
        """One datagram with the control message its answers need, or None for one to skip
        (counted). One byte more than MAX_DATAGRAM is asked for: a datagram that fills it was
        longer than any message we answer, and its first MAX_DATAGRAM bytes would parse as a
        message it is not."""
        try:
            if self._ancillary_space:
                data, ancillary, _, source = self._sock.recvmsg(
                    MAX_DATAGRAM + 1, self._ancillary_space
                )
                control = _reply_control(ancillary)
            else:
                data, source = self._sock.recvfrom(MAX_DATAGRAM + 1)
                control = _NO_CONTROL
        except (BlockingIOError, InterruptedError):
            raise
        except OSError as error:
            # An ICMP error for an earlier send (a peer's NAT closed): nothing to do.
            logger.debug("udp error: %s", error)
            return None
        if len(data) > MAX_DATAGRAM:
            self.drops["oversized"] += 1
            return None
        return data, source if len(source) == 2 else (source[0], source[1]), control

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

    def _send(
        self,
        datagram: bytes,
        destination: Endpoint,
        control: list[ControlMessage],
        flags: int = socket.MSG_DONTWAIT,  # the loop never waits for buffer space
    ) -> None:
        try:
            if control:
                self._sock.sendmsg([datagram], control, flags, destination)
            else:
                self._sock.sendto(datagram, flags, destination)
        except OSError as error:
            # UDP gives no delivery promise; a full buffer is a lost packet, as on the wire.
            self.send_failures += 1
            logger.debug("udp send to %s failed: %s", destination, error)


class _ReaderThread:
    """Reads the endpoint's socket in a thread: forwards what the lane takes, queues the rest
    (bounded) for the loop, which drains it in batches."""

    def __init__(self, endpoint: DatagramEndpoint, lane: FastLane) -> None:
        self._endpoint = endpoint
        self._lane = lane
        self._inbox: collections.deque[tuple[bytes, Endpoint, list[ControlMessage]]] = (
            collections.deque()
        )
        self._drain_posted = False
        self._room = threading.Event()  # cleared by the thread when the inbox is full
        self._stopping = threading.Event()
        sock = endpoint._sock
        # Blocking, with a receive timeout in the kernel (so no poll before each read): the
        # thread sees its stop flag at least every READER_WAKE_S.
        seconds = int(READER_WAKE_S)
        timeout = struct.pack("ll", seconds, int((READER_WAKE_S - seconds) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        sock.setblocking(True)
        self._thread = threading.Thread(target=self._run, name="udp-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        # A receive and then a send may each wait READER_WAKE_S before the flag is seen.
        self._thread.join(3 * READER_WAKE_S)

    def _run(self) -> None:
        endpoint, lane, clock = self._endpoint, self._lane, self._endpoint._clock
        while not self._stopping.is_set():
            if len(self._inbox) >= INBOX_LIMIT and not self._wait_for_room():
                continue  # look at the stop flag again
            try:
                received = endpoint._receive()
            except (BlockingIOError, InterruptedError):
                continue  # the receive timeout: look at the stop flag again
            if received is None:
                continue
            data, source, control = received
            try:
                if not lane.takes(data):
                    self._to_loop(received)
                elif (destination := lane.destination(data, source, clock())) is not None:
                    endpoint._send(data, destination, control, 0)  # waits for buffer space
            except Exception:
                logger.exception("forwarding a datagram from %s failed", source)

    def _wait_for_room(self) -> bool:
        """Whether the loop took something from the full inbox within READER_WAKE_S."""
        self._room.clear()
        if len(self._inbox) < INBOX_LIMIT:  # a drain ran before the clear: it set nothing
            return True
        return self._room.wait(READER_WAKE_S)

    def _to_loop(self, received: tuple[bytes, Endpoint, list[ControlMessage]]) -> None:
        self._inbox.append(received)  # never past INBOX_LIMIT: _run looked before reading
        if not self._drain_posted:
            # Cleared by the drain before it reads the inbox, so nothing appended here waits
            # for a drain that already ran.
            self._drain_posted = True
            self._endpoint._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._drain_posted = False
        for _ in range(BATCH):
            if not self._inbox:  # only the loop takes from it
                break
            self._endpoint._handle(*self._inbox.popleft())
        if not self._room.is_set():
            self._room.set()  # once a batch: a reader woken for each datagram costs more
        if self._inbox and not self._drain_posted:
            self._drain_posted = True
            self._endpoint._loop.call_soon(self._drain)  # other tasks get a turn first


def _is_wildcard(sock: socket.socket) -> bool:
    return ipaddress.ip_address(str(sock.getsockname()[0])).is_unspecified


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
        _ask_for_buffers(sock)
        sock.setblocking(False)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _ask_for_buffers(sock: socket.socket) -> None:
    """BUFFER_BYTES each way: forced where we may (CAP_NET_ADMIN), else up to the sysctl caps,
    which the log line names when they hold us back."""
    for forced, plain, cap in (
        (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF, "net.core.rmem_max"),
        (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF, "net.core.wmem_max"),
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, BUFFER_BYTES)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER_BYTES)
        got = sock.getsockopt(socket.SOL_SOCKET, plain) // 2  # Linux reports twice the size
        if got < BUFFER_BYTES:
            logger.info(
                "udp socket buffer %d KiB, not the %d KiB asked for: a busy relay drops "
                "datagrams sooner (raise %s to %d)",
                got // 1024,
                BUFFER_BYTES // 1024,
                cap,
                BUFFER_BYTES,
            )
