"""The one UDP adapter over loopback (a datagram cut short by the socket never reaches a core),
and the WireGuard port's dispatcher."""

from __future__ import annotations

import asyncio
import socket

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpeer.common.endpoints import Endpoint
from meshpeer.rendezvous.handshake import Event, Responder
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
