"""The asyncio adapter around the handshake core: one UDP socket, nothing else.

It feeds every datagram to the `Responder`, sends what the core produced from the same socket
(so answers leave from the address and port the peer sent to, as long as the socket is bound
to one address), and hands each event to `on_event`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from .handshake import Event, Responder

logger = logging.getLogger("meshpeer.rendezvous.udp")
logger.addHandler(logging.NullHandler())


class HandshakeProtocol(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder, on_event: Callable[[Event], None]) -> None:
        self.responder = responder
        self._on_event = on_event
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_datagram_endpoint always passes a datagram transport (not a subclass on 3.11).
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        loop = asyncio.get_running_loop()
        self.responder.receive_datagram(data, (addr[0], addr[1]), loop.time())
        transport = self._transport
        for datagram, destination in self.responder.datagrams_to_send():
            if transport is not None:
                transport.sendto(datagram, destination)
        while (event := self.responder.next_event()) is not None:
            self._on_event(event)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier sends (a peer's NAT closed): nothing to do but note it.
        logger.debug("udp error: %s", exc)


async def serve_handshakes(
    responder: Responder, host: str, port: int, on_event: Callable[[Event], None]
) -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: HandshakeProtocol(responder, on_event), local_addr=(host, port)
    )
    return transport
