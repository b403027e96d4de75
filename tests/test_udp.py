"""The one UDP adapter over loopback (a datagram cut short by the socket never reaches a core,
answers leave from the address hit, the reader thread's lane and its bounded queue to the
loop), and the WireGuard port's dispatcher."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common.endpoints import Endpoint
from meshpeer.rendezvous import udp
from meshpeer.rendezvous.handshake import Event, Responder
from meshpeer.rendezvous.timers import READER_WAKE_S
from meshpeer.rendezvous.udp import DatagramEndpoint, open_socket
from meshpeer.rendezvous.wgport import WireGuardPort
from meshpeer.rendezvous.wire import MAX_DATAGRAM


def test_an_oversized_datagram_is_dropped_and_the_next_one_is_handled() -> None:
    async def scenario() -> tuple[list[bytes], int, bytes]:
        handled: list[bytes] = []

        def echo(data: bytes, source: Endpoint, now: float) -> list[tuple[bytes, Endpoint]]:
            handled.append(data)
            return [(data, source)]

        endpoint = DatagramEndpoint(open_socket("127.0.0.1", 0), echo)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        try:
            client.sendto(b"\x04" * (MAX_DATAGRAM + 1), endpoint.address)
            client.sendto(b"\x01normal", endpoint.address)
            loop = asyncio.get_running_loop()
            echoed = await asyncio.wait_for(loop.sock_recv(client, 65536), 2.0)
        finally:
            client.close()
            endpoint.close()
        return handled, endpoint.drops["oversized"], echoed

    handled, oversized, echoed = asyncio.run(scenario())
    assert handled == [b"\x01normal"]  # the oversized one never reached the handler
    assert oversized == 1
    assert echoed == b"\x01normal"


def test_a_datagram_of_exactly_the_largest_size_is_handed_on() -> None:
    async def scenario() -> list[int]:
        sizes: list[int] = []

        def record(data: bytes, source: Endpoint, now: float) -> list[tuple[bytes, Endpoint]]:
            sizes.append(len(data))
            return [(b"ok", source)]

        endpoint = DatagramEndpoint(open_socket("127.0.0.1", 0), record)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        try:
            client.sendto(bytes(MAX_DATAGRAM), endpoint.address)
            await asyncio.wait_for(asyncio.get_running_loop().sock_recv(client, 16), 2.0)
        finally:
            client.close()
            endpoint.close()
        return sizes

    assert asyncio.run(scenario()) == [MAX_DATAGRAM]


def test_the_wireguard_port_routes_claimed_datagrams_to_their_core() -> None:
    """The relay gets what the responder does not claim, transport data by its own path; the
    responder still gets the rest."""

    class Relay:
        def __init__(self) -> None:
            self.received: list[bytes] = []

        def receive_datagram(self, data: bytes, source: Endpoint, now: float) -> None:
            self.received.append(data)

        def datagrams_to_send(self) -> list[tuple[bytes, Endpoint]]:
            return [(b"relayed", ("192.0.2.1", 9))] if self.received else []

        def next_event(self) -> Event | None:
            return None

        def transport_destination(
            self, data: bytes, source: Endpoint, now: float
        ) -> Endpoint | None:
            self.received.append(data)
            return ("192.0.2.2", 10)

    responder = Responder(X25519PrivateKey.generate())
    relay = Relay()
    port = WireGuardPort(responder, lambda event: None, relay)
    source = ("198.51.100.7", 40000)
    transport = b"\x04" + bytes(31)
    assert port.handle(transport, source, 1.0) == [(transport, ("192.0.2.2", 10))]
    response = b"\x02" + bytes(91)
    assert port.handle(response, source, 1.0) == [(b"relayed", ("192.0.2.1", 9))]
    assert port.handle(b"\x01" + bytes(3), source, 1.0) == []
    assert relay.received == [transport, response]
    assert responder.drops == {"malformed": 1}  # the responder saw only the unclaimed one


class Lane:
    """A fast lane that takes datagrams starting with b"R" and sends them to `to`, recording
    the thread it ran on."""

    def __init__(self, to: Endpoint) -> None:
        self.to = to
        self.threads: set[int] = set()

    def takes(self, data: bytes) -> bool:
        return data[:1] == b"R"

    def destination(self, data: bytes, source: Endpoint, now: float) -> Endpoint | None:
        self.threads.add(threading.get_ident())
        return self.to


def _stand_still(done: Callable[[], bool], seconds: float) -> None:
    """Hold the calling (loop's) thread until `done` or `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not done():
        time.sleep(0.01)


def _client() -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(2.0)
    return client


@pytest.mark.allow_blocking  # the loop is made to stand still on purpose
def test_the_lane_forwards_while_the_loop_stands_still_and_the_rest_reaches_the_loop() -> None:
    async def scenario() -> None:
        loop_thread = threading.get_ident()
        on_loop: list[tuple[bytes, int]] = []

        def handler(data: bytes, source: Endpoint, now: float) -> list[tuple[bytes, Endpoint]]:
            on_loop.append((data, threading.get_ident()))
            return [(b"answer", source)]

        sender, receiver = _client(), _client()
        lane = Lane(receiver.getsockname())
        endpoint = DatagramEndpoint(open_socket("127.0.0.1", 0), handler, lane=lane)
        try:
            sender.sendto(b"R relayed", endpoint.address)
            _stand_still(lambda: False, 0.3)  # the loop does; the reader thread does not
            assert receiver.recv(64) == b"R relayed"
            sender.sendto(b"H handshake", endpoint.address)
            answer = await asyncio.get_running_loop().run_in_executor(None, sender.recv, 64)
            assert answer == b"answer"
        finally:
            endpoint.close()
            sender.close()
            receiver.close()
        assert on_loop == [(b"H handshake", loop_thread)]
        assert lane.threads and loop_thread not in lane.threads

    asyncio.run(scenario())


@pytest.mark.allow_blocking
def test_a_stalled_loop_stops_the_reader_and_what_waits_stays_in_the_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The thread reads no further than the inbox holds: every datagram it read only to drop
    took the GIL from the loop it was waiting for (under a flood of initiations the thread
    used half a core that way, and /healthz took twice as long as with no thread at all)."""
    monkeypatch.setattr(udp, "INBOX_LIMIT", 16)

    async def scenario() -> tuple[list[bytes], float]:
        handled: list[bytes] = []

        def handler(data: bytes, source: Endpoint, now: float) -> list[tuple[bytes, Endpoint]]:
            handled.append(data)
            return []

        sender = _client()
        endpoint = DatagramEndpoint(open_socket("127.0.0.1", 0), handler, lane=Lane(("", 0)))
        try:
            for n in range(100):
                sender.sendto(b"H%d" % n, endpoint.address)
            _stand_still(lambda: False, 0.3)  # the thread fills the inbox meanwhile, then waits
            for _ in range(200):
                if len(handled) == 100:
                    break
                await asyncio.sleep(0.01)
        finally:
            started = time.monotonic()
            endpoint.close()  # a reader that waits for room still stops at once
            sender.close()
        return handled, time.monotonic() - started

    handled, took = asyncio.run(scenario())
    assert handled == [b"H%d" % n for n in range(100)]  # none lost, none out of order
    assert took < 2 * READER_WAKE_S + 0.2


def test_the_reader_thread_stops_with_its_socket() -> None:
    async def scenario() -> tuple[float, bool]:
        endpoint = DatagramEndpoint(open_socket("127.0.0.1", 0), lambda *_: [], lane=Lane(("", 0)))
        reader = [thread for thread in threading.enumerate() if thread.name == "udp-reader"]
        assert reader
        started = time.monotonic()
        endpoint.close()
        return time.monotonic() - started, any(thread.is_alive() for thread in reader)

    took, alive = asyncio.run(scenario())
    assert not alive
    assert took < 2 * READER_WAKE_S + 0.2


@pytest.mark.parametrize("lane", [None, Lane(("127.0.0.1", 9))], ids=["loop", "thread"])
def test_on_a_wildcard_bind_answers_leave_from_the_address_the_datagram_hit(
    lane: Lane | None,
) -> None:
    """127.0.0.2 is the loopback's too: an answer from 127.0.0.1 would be dropped by a NAT."""

    async def scenario() -> tuple[bytes, Endpoint]:
        endpoint = DatagramEndpoint(
            # Every address, but only loopback is sent to.
            open_socket("0.0.0.0", 0),  # noqa: S104
            lambda data, source, now: [(b"hi", source)],
            lane=lane,
        )
        client = _client()
        try:
            client.sendto(b"H", ("127.0.0.2", endpoint.address[1]))
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, client.recvfrom, 64)
        finally:
            client.close()
            endpoint.close()

    answer, source = asyncio.run(scenario())
    assert answer == b"hi"
    assert source[0] == "127.0.0.2"
