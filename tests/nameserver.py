"""A tiny in-process DNS server for tests (as dnspython's tests/nanonameserver.py): UDP and TCP
on one port of 127.0.0.1, served by a thread, each query answered by a handler. No root, no
network beyond loopback.

The handler takes the query and returns a response message, raw bytes (hostile or broken wire
data), or None to drop the query. `zone_handler` answers from a meshpeer.dns.records.Zone the
way the rendezvous does: an SRV answer carries the instance's address and TXT as additional
records, as wgsd's clients expect.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from meshpeer.common.endpoints import Endpoint
from meshpeer.dns.records import Zone

Handler = Callable[[dns.message.Message], dns.message.Message | bytes | None]
MAX_UDP = 65535
POLL_S = 0.05  # how soon the thread sees that it must stop


class NanoNameserver:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.queries: list[dns.message.Message] = []  # in the order they came, both transports
        self._udp, self._tcp = _bind_pair()
        self.endpoint: Endpoint = ("127.0.0.1", self._udp.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="nanonameserver", daemon=True)

    def __enter__(self) -> NanoNameserver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._udp.close()
        self._tcp.close()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ)
            selector.register(self._tcp, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in selector.select(POLL_S):
                    if key.fileobj is self._udp:
                        self._serve_udp()
                    else:
                        self._serve_tcp()

    def _serve_udp(self) -> None:
        wire, source = self._udp.recvfrom(MAX_UDP)
        reply = self._reply(wire)
        if reply is not None:
            self._udp.sendto(reply, source)

    def _serve_tcp(self) -> None:
        connection, _ = self._tcp.accept()
        with connection:
            connection.settimeout(1.0)
            with contextlib.suppress(OSError):
                while (wire := _read_framed(connection)) is not None:
                    reply = self._reply(wire)
                    if reply is None:
                        return
                    connection.sendall(struct.pack("!H", len(reply)) + reply)

    def _reply(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        self.queries.append(query)
        answer = self.handler(query)
        return answer.to_wire() if isinstance(answer, dns.message.Message) else answer


def _bind_pair() -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same free port (resolvers use one port for both)."""
    for _ in range(20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", udp.getsockname()[1]))
        except OSError as error:
            udp.close()
            tcp.close()
            if error.errno != errno.EADDRINUSE:
                raise
            continue
        tcp.listen(8)
        return udp, tcp
    raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")


def _read_framed(connection: socket.socket) -> bytes | None:
    """One length-prefixed DNS message (RFC 1035 4.2.2); None when the client is done."""
    prefix = _read_exactly(connection, 2)
    return None if prefix is None else _read_exactly(connection, struct.unpack("!H", prefix)[0])


def _read_exactly(connection: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def zone_handler(zone: Zone) -> Handler:
    def answer(query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        question = query.question[0]
        if question.name == zone.service and question.rdtype == dns.rdatatype.PTR:
            response.answer.append(zone.ptr_rrset(question.name))  # kept apart from nodes
            return response
        node = zone.node(question.name)
        if node is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        if question.rdtype in node:
            response.answer.append(node[question.rdtype])
        if question.rdtype == dns.rdatatype.SRV:
            extra = [rrset for rdtype, rrset in node.items() if rdtype != question.rdtype]
            response.additional += extra
        return response

    return answer


@pytest.fixture
def nameserver() -> Iterator[Callable[[Handler], NanoNameserver]]:
    """Start servers with `nameserver(handler)`; each is stopped when the test ends."""
    with contextlib.ExitStack() as servers:
        yield lambda handler: servers.enter_context(NanoNameserver(handler))
